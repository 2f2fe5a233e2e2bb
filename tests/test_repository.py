"""Model-repository generation (export/repository.py) from a small fake artifacts dir.

The fake ONNX graphs are built with onnx.helper from a spec of tiny Dims: each output has
the spec's shape, and row ``i`` of every output is the sum of the row means of the inputs that
share its leading axis (+ the output's index), so a batch split or a size mismatch is visible.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from export.manifest import Manifest, ManifestError, file_entry
from export.pbtxt import to_pbtxt
from export.repository import ORCHESTRATOR, RepositoryError, build_repository, queue_config, triton_dtype
from sam3_spec import (
    COMPONENTS,
    NP_DTYPES,
    SAM3_BATCHING,
    SAM3_INPUTS,
    SAM3_OUTPUTS,
    Batching,
    ComponentSpec,
    Dims,
    by_reference,
    component_specs,
    reference_parameter,
)
from tests.pbtxt import config_parameters, parse_config_text

TINY = Dims(image_size=56, patch=14, hidden=16, queries=4, text_hidden=16)
ONNX_TYPES = {
    "FP32": TensorProto.FLOAT,
    "FP16": TensorProto.FLOAT16,
    "UINT8": TensorProto.UINT8,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "BOOL": TensorProto.BOOL,
}
OPSET = 17

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- fake artifacts


def _value_info(t):
    return helper.make_tensor_value_info(t.name, ONNX_TYPES[t.dtype], list(t.shape))


def _row_signal(spec: ComponentSpec, axis: str, nodes: list) -> str:
    """[N] float: Σ over inputs led by ``axis`` of their per-row mean."""
    terms = []
    for t in (t for t in spec.inputs if t.shape[0] == axis):
        nodes.append(helper.make_node("Cast", [t.name], [f"{t.name}__f"], to=TensorProto.FLOAT))
        axes = list(range(1, len(t.shape)))
        nodes.append(helper.make_node("ReduceMean", [f"{t.name}__f"], [f"{t.name}__row"], axes=axes, keepdims=0))
        terms.append(f"{t.name}__row")
    nodes.append(helper.make_node("Sum", terms, [f"{axis}__signal"]))
    return f"{axis}__signal"


def _shape_of(spec: ComponentSpec, out, nodes: list, inits: list) -> str:
    """int64 [rank] tensor: the output's shape, dynamic axes read from the inputs with Shape."""
    parts = []
    for i, d in enumerate(out.shape):
        name = f"{out.name}__d{i}"
        if isinstance(d, int):
            inits.append(helper.make_tensor(name, TensorProto.INT64, [1], [d]))
        else:
            src = next(t for t in spec.inputs if d in t.shape)
            j = src.shape.index(d)
            nodes.append(helper.make_node("Shape", [src.name], [name], start=j, end=j + 1))
        parts.append(name)
    nodes.append(helper.make_node("Concat", parts, [f"{out.name}__shape"], axis=0))
    return f"{out.name}__shape"


def fake_graph(spec: ComponentSpec) -> onnx.ModelProto:
    """A valid ONNX graph with exactly the spec's inputs/outputs (names, dtypes, shapes)."""
    nodes, inits = [], []
    signals = {a: _row_signal(spec, a, nodes) for a in dict.fromkeys(o.shape[0] for o in spec.outputs)}
    for k, out in enumerate(spec.outputs):
        rank = len(out.shape)
        inits.append(helper.make_tensor(f"{out.name}__k", TensorProto.FLOAT, [], [float(k)]))
        inits.append(helper.make_tensor(f"{out.name}__col", TensorProto.INT64, [rank], [-1] + [1] * (rank - 1)))
        nodes.append(helper.make_node("Add", [signals[out.shape[0]], f"{out.name}__k"], [f"{out.name}__v"]))
        nodes.append(helper.make_node("Reshape", [f"{out.name}__v", f"{out.name}__col"], [f"{out.name}__r"]))
        shape = _shape_of(spec, out, nodes, inits)
        nodes.append(helper.make_node("Expand", [f"{out.name}__r", shape], [f"{out.name}__e"]))
        nodes.append(helper.make_node("Cast", [f"{out.name}__e"], [out.name], to=ONNX_TYPES[out.dtype]))
    graph = helper.make_graph(
        nodes,
        f"fake_{spec.name}",
        [_value_info(t) for t in spec.inputs],
        [_value_info(t) for t in spec.outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_fake_artifacts(directory: Path, dims: Dims = TINY) -> Path:
    """Write manifest.json + <component>.onnx (fake graphs) + tokenizer.json into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, spec in component_specs(dims).items():
        onnx.save(fake_graph(spec), directory / spec.onnx_file)
        entries[name] = file_entry(directory / spec.onnx_file)
    (directory / "tokenizer.json").write_text(json.dumps({"fake": True}))
    Manifest(model="fake", revision="test", dims=dims, components=entries).save(directory)
    return directory


def fake_orchestrator_source(directory: Path) -> Path:
    """A triton_repo/-like source dir with sam3/1/model.py (+ a __pycache__ to skip) and ort_component."""
    real = Path(__file__).resolve().parents[1] / "triton_repo"
    (directory / "sam3" / "1" / "__pycache__").mkdir(parents=True)
    (directory / "sam3" / "1" / "model.py").write_text("# orchestrator placeholder for repository tests\n")
    (directory / "sam3" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"stale")
    (directory / "ort_component" / "1").mkdir(parents=True)
    (directory / "ort_component" / "1" / "model.py").write_bytes((real / "ort_component/1/model.py").read_bytes())
    return directory


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture
def source(tmp_path) -> Path:
    return fake_orchestrator_source(tmp_path / "triton_repo")


def read_config(repo: Path, model: str) -> dict:
    return parse_config_text((repo / model / "config.pbtxt").read_text())


def check_tensors(entries: list, tensors: tuple, batched: bool) -> None:
    """Config entries equal the spec tensors: names, data types, dims, optional flags."""
    assert [e["name"] for e in entries] == [t.name for t in tensors]
    for e, t in zip(entries, tensors):
        assert e["data_type"] == triton_dtype(t.dtype)
        assert e["dims"] == t.triton_dims(batched)
        assert e.get("optional", False) == t.optional


def check_component(config: dict, spec: ComponentSpec, kind: str, count: int = 1) -> None:
    batched = spec.batch_axis is not None
    assert config["name"] == spec.triton_name
    assert config["max_batch_size"] == (spec.profiles[spec.batch_axis].max if batched else 0)
    assert ("dynamic_batching" in config) == batched
    check_tensors(config["input"], spec.inputs, batched)
    check_tensors(config["output"], spec.outputs, batched)
    assert config["instance_group"] == [{"count": count, "kind": kind}]


# ---------------------------------------------------------------- tests


def test_fake_graphs_run_at_spec_shapes(artifacts):
    """The fake graphs produce the spec's output shapes at every parity size (sanity of the fixture)."""
    for spec in component_specs(TINY).values():
        session = ort.InferenceSession(str(artifacts / spec.onnx_file), providers=["CPUExecutionProvider"])
        for sizes in spec.parity_sizes:
            feeds = {t.name: np.ones(t.resolve(sizes), dtype=NP_DTYPES[t.dtype]) for t in spec.inputs}
            outs = session.run(None, feeds)
            assert [o.shape for o in outs] == [t.resolve(sizes) for t in spec.outputs]


def test_cpu_repository_matches_spec(artifacts, tmp_path):
    repo = build_repository(artifacts, tmp_path / "repo", "cpu", instances={"vision": 2}, models=list(COMPONENTS))
    specs = component_specs(TINY)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(s.triton_name for s in specs.values())
    for spec in specs.values():
        config = read_config(repo, spec.triton_name)
        # the cpu target's stub takes image features by reference (sam3_spec.by_reference); the graph does not
        check_component(config, by_reference(spec), "KIND_CPU", count=2 if spec.name in ("vision", "prompt") else 1)
        assert config["backend"] == "python" and "platform" not in config
        params = config_parameters(config)
        assert params["onnx_file"] == spec.onnx_file
        assert json.loads(params["by_reference"]) == reference_parameter(spec)
        version = repo / spec.triton_name / "1"
        assert (version / params["onnx_file"]).read_bytes() == (artifacts / spec.onnx_file).read_bytes()
        assert "class TritonPythonModel" in (version / "model.py").read_text()


def test_by_reference_adds_the_ref_to_vision_and_the_heads_only():
    """Vision: one features_ref per image in, one features_written per image out; each head: its image features
    optional beside a features_ref; text: unchanged. The graphs' own tensors keep their order and shapes."""
    specs = component_specs(TINY)
    vision = by_reference(specs["vision"])
    assert [t.name for t in vision.inputs] == ["pixel_values", "features_ref"]
    assert vision.outputs[:-1] == specs["vision"].outputs and vision.outputs[-1].name == "features_written"
    assert vision.inputs[-1].shape == ("batch", 1) and vision.outputs[-1].shape == ("batch", 1)
    assert by_reference(specs["text"]) == specs["text"] and reference_parameter(specs["text"]) == {}
    for head, names in (
        ("concept", {"fpn_2"}),
        ("mask", {"fpn_0", "fpn_1"}),
        ("prompt", {"track_0", "track_1", "track_2"}),
    ):
        served = by_reference(specs[head])
        assert [t.name for t in served.inputs] == [t.name for t in specs[head].inputs] + ["features_ref"]
        assert {t.name for t in served.inputs if t.optional} == names | {"features_ref"}
        assert set(reference_parameter(specs[head])["tensors"]) == names
    assert reference_parameter(specs["vision"])["tensors"] == [t.name for t in specs["vision"].outputs]


@pytest.mark.parametrize(
    ("target", "instances", "prompt_count"),
    [("cpu", None, 2), ("cpu", {"prompt": 1}, 1), ("cpu", {"sam3_prompt": 3}, 3), ("gpu", None, 1)],
)
def test_prompt_instances_default_per_target_and_yield_to_the_caller(
    artifacts, tmp_path, target, instances, prompt_count
):
    """cpu: two prompt instances unless told otherwise (DEFAULT_INSTANCES); every other model keeps one."""
    repo = build_repository(artifacts, tmp_path / "repo", target, instances=instances, models=list(COMPONENTS))
    counts = {
        s.name: read_config(repo, s.triton_name)["instance_group"][0]["count"] for s in component_specs(TINY).values()
    }
    assert counts == {name: prompt_count if name == "prompt" else 1 for name in COMPONENTS}


def test_vision_gets_dynamic_batching_without_delay(artifacts, tmp_path):
    """The orchestrator sends one vision call per batch already; a delay would only add to cold requests."""
    repo = build_repository(artifacts, tmp_path / "repo", models=["sam3_vision", "sam3_concept"])
    batching = read_config(repo, "sam3_vision")["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 0
    assert read_config(repo, "sam3_concept")["max_batch_size"] == 0


def test_gpu_repository_uses_plans_and_onnx_fallback(artifacts, tmp_path):
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "vision.plan").write_bytes(b"not a real engine")
    repo = build_repository(artifacts, tmp_path / "repo", "gpu", engines_dir=engines, models=list(COMPONENTS))
    for spec in component_specs(TINY).values():
        config = read_config(repo, spec.triton_name)
        check_component(config, spec, "KIND_GPU")
        assert "backend" not in config and "parameters" not in config
        version = repo / spec.triton_name / "1"
        if spec.name == "vision":
            assert config["platform"] == "tensorrt_plan"
            assert (version / "model.plan").read_bytes() == b"not a real engine"
        else:
            assert config["platform"] == "onnxruntime_onnx"
            assert (version / "model.onnx").read_bytes() == (artifacts / spec.onnx_file).read_bytes()


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_orchestrator_config_from_sam3_spec(artifacts, tmp_path, source, target):
    extra = {"cache_size": 8, "default_mode": "text"}
    repo = build_repository(
        artifacts, tmp_path / "repo", target, instances={ORCHESTRATOR: 3}, orchestrator_params=extra, source=source
    )
    config = read_config(repo, ORCHESTRATOR)
    assert config["backend"] == "python" and config["max_batch_size"] == SAM3_BATCHING.max_batch_size > 1
    check_tensors(config["input"], SAM3_INPUTS, batched=False)
    check_tensors(config["output"], SAM3_OUTPUTS, batched=False)
    ragged = {e["name"] for e in config["input"] if e.get("allow_ragged_batch")}
    assert ragged == {"text", "points", "point_labels", "boxes", "box_labels"}  # the variable-length inputs
    queue = config["dynamic_batching"]
    assert queue["max_queue_delay_microseconds"] == SAM3_BATCHING.max_queue_delay_us
    assert "default_queue_policy" not in queue  # Triton 2.51 stalls ~500 ms with one (see Batching)

    assert config["instance_group"] == [{"count": 3, "kind": "KIND_GPU" if target == "gpu" else "KIND_CPU"}]
    params = config_parameters(config)
    assert json.loads(params["dims"]) == {"image_size": 56, "patch": 14, "hidden": 16, "queries": 4, "text_hidden": 16}
    assert json.loads(params["components"]) == {n: f"sam3_{n}" for n in COMPONENTS}
    assert params["cache_size"] == "8" and params["default_mode"] == "text" and params["target"] == target
    assert (params.get("FORCE_CPU_ONLY_INPUT_TENSORS") == "no") == (target == "gpu")
    version = repo / ORCHESTRATOR / "1"
    assert (version / params["tokenizer"]).read_text() == (artifacts / "tokenizer.json").read_text()
    assert (version / "model.py").is_file() and not (version / "__pycache__").exists()


def test_queue_policy_is_written_when_asked_for():
    bounded = queue_config(Batching(max_queue_size=16, queue_timeout_us=2_000_000))
    assert bounded["default_queue_policy"] == {
        "timeout_action": "REJECT",
        "default_timeout_microseconds": 2_000_000,
        "allow_timeout_override": True,
        "max_queue_size": 16,
    }
    assert queue_config(Batching(max_queue_size=4))["default_queue_policy"] == {"max_queue_size": 4}
    assert "default_queue_policy" not in queue_config(Batching())


def test_configs_are_valid_triton_model_configs(artifacts, tmp_path, source):
    """Every generated config parses into Triton's own ModelConfig proto (field names, enums)."""
    for target in ("cpu", "gpu"):
        repo = build_repository(artifacts, tmp_path / target, target, source=source)
        for config_file in sorted(repo.glob("*/config.pbtxt")):
            message = text_format.Parse(config_file.read_text(), model_config_pb2.ModelConfig())
            assert message.name == config_file.parent.name
            assert len(message.input) == len(read_config(repo, message.name)["input"])


def test_pbtxt_round_trip_and_triton_style_text(artifacts, tmp_path):
    repo = build_repository(artifacts, tmp_path / "repo", models=["text"])
    text = (repo / "sam3_text" / "config.pbtxt").read_text()
    assert to_pbtxt(parse_config_text(text)) == text
    handwritten = """
    # comment
    name: "m"  max_batch_size: 0
    input { name: "a" data_type: TYPE_FP32 dims: [ -1, 3 ] }
    input { name: "b\\"q" data_type: TYPE_BOOL dims: 2 dims: 5 optional: true }
    parameters: { key: "x" value: { string_value: "1.5" } }
    """
    parsed = parse_config_text(handwritten)
    assert parsed["input"][0] == {"name": "a", "data_type": "TYPE_FP32", "dims": [-1, 3]}
    assert parsed["input"][1] == {"name": 'b"q', "data_type": "TYPE_BOOL", "dims": [2, 5], "optional": True}
    assert config_parameters(parsed) == {"x": "1.5"}
    with pytest.raises(ValueError, match="unexpected end"):
        parse_config_text('name: "m" input { name: "a"')


def test_rebuild_replaces_previous_output(artifacts, tmp_path):
    out = tmp_path / "repo"
    build_repository(artifacts, out, models=["vision", "text"])
    build_repository(artifacts, out, models=["text"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["sam3_text"]
    assert not list(tmp_path.glob(".repo.building-*"))


def test_bad_options_raise_clear_errors(artifacts, tmp_path, source):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    cases = [
        (dict(out=foreign), "not generated by build_repository"),
        (dict(models=["sam3_decoder"]), "unknown or not exported models"),
        (dict(instances={"vision": 0}, models=["vision"]), "count ≥ 1"),
        (dict(instances={"text": 2}, models=["vision"]), "each key must be one of"),
        (dict(target="tpu"), "target must be one of"),
        (dict(engines_dir=tmp_path), "only used with target='gpu'"),
        (dict(source=tmp_path / "nowhere"), "orchestrator source"),
        (dict(source=tmp_path / "nowhere", models=["text"]), "component model code"),
    ]
    for kwargs, message in cases:
        kwargs = {"out": tmp_path / "repo", "source": source, **kwargs}
        with pytest.raises(RepositoryError, match=message):
            build_repository(artifacts, **kwargs)
    assert (foreign / "keep.txt").read_text() == "user data"
    assert not (tmp_path / "repo").exists()


def test_missing_artifacts_raise_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json"):
        build_repository(tmp_path, tmp_path / "repo")
