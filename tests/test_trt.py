"""export/trt.py without a GPU: every decision it makes, and clear refusals where a GPU is needed.

Building and running engines needs an NVIDIA GPU and the tensorrt package; neither exists on
our machines, so those paths are checked only for refusing at once with GpuUnavailableError.
Everything else (profiles, precision rules, names, records, metrics, the ONNX Runtime half of
the parity check) is plain Python and tested here for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tomllib
from onnx import TensorProto, helper
from test_repository import TINY, make_fake_artifacts  # tests/ is on sys.path (pytest prepend import mode)

from export import trt
from export.inputs import example_inputs
from export.manifest import load_manifest, sha256
from export.trt import pins
from sam3_spec import COMPONENTS, ComponentSpec, Profile, TensorSpec, component_specs
from tests.gpu import NO_GPU, REAL, gpu_present

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- import and pins


def test_module_imports_without_tensorrt_or_torch():
    code = (
        "import sys, export.trt; bad = [m for m in ('tensorrt', 'torch', 'onnxruntime', 'onnx') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=60)


def test_pins_are_one_consistent_pair():
    assert trt.TRITON_IMAGE == f"nvcr.io/nvidia/tritonserver:{trt.TRITON_RELEASE}-py3"
    assert trt.TENSORRT_PIP == f"tensorrt-cu12=={trt.TENSORRT_VERSION}"
    assert trt.TENSORRT_VERSION.split(".")[:2] == ["10", "8"]  # release 25.01 ships TensorRT 10.8.0.43
    assert trt.TRITON_BINARY == "/opt/tritonserver/bin/tritonserver"


def test_every_gpu_version_pin_is_in_pins_py():
    """The pinned GPU-path requirements appear as literals only in export/trt/pins.py."""
    root = Path(__file__).resolve().parents[1]
    sources = [
        root / "modal_triton.py",
        *(p for d in ("export", "server", "deploy", "bench") for p in root.glob(f"{d}/**/*.py")),
    ]
    literals = {
        "tensorrt-cu12==",
        "onnxruntime-gpu==",
        "setuptools>=",
        'TRITON_RELEASE = "',
        "torch==",
        "transformers==",
    }
    found = {pin: [str(p.relative_to(root)) for p in sources if pin in p.read_text()] for pin in literals}
    assert found == {pin: ["export/trt/pins.py"] for pin in literals}


def test_local_install_pins_agree_with_pins_py():
    """pyproject (the local install) and scripts/install.sh pin the same torch, torchvision and
    transformers as the GPU images; only tritonclient differs on purpose (the bundled 2.51 server)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    export_extra = pyproject["project"]["optional-dependencies"]["export"]
    install = (root / "scripts" / "install.sh").read_text()
    for pin in (pins.TORCH_PIP, pins.TORCHVISION_PIP, pins.TRANSFORMERS_PIP):
        assert pin in export_extra, (pin, export_extra)
    assert pins.TORCH_PIP in install and pins.TORCHVISION_PIP in install
    local_client = next(d for d in pyproject["project"]["dependencies"] if d.startswith("tritonclient"))
    assert local_client.split("==")[1] == "2.51.0" != pins.TRITONCLIENT_GPU_PIP.split("==")[1]


def test_torch_wheel_cuda_pin_is_the_installed_wheel():
    """The stated CUDA of torch's default wheel is what torch/version.py of the installed one says."""
    assert trt.torch_cuda_version() == trt.TORCH_WHEEL_CUDA
    assert (
        trt.TORCH_PIP.split("==")[1]
        in (Path(trt.env.importlib.util.find_spec("torch").origin).parent / "version.py").read_text()
    )


# ---------------------------------------------------------------- CUDA runtime vs driver (item 7)


def test_cuda_driver_problem_names_the_driver_branch():
    problem = trt.cuda_driver_problem("13.0", (12, 8))
    assert "CUDA 13.0" in problem and "R580" in problem and "supports CUDA 12.8" in problem
    assert trt.cuda_driver_problem("13.0", (13, 0)) is None
    assert trt.cuda_driver_problem("12.8", (12, 2)) is None  # minor-version compatibility
    assert trt.cuda_driver_problem("12.8", (13, 1)) is None


def test_check_torch_cuda_refuses_an_old_driver():
    with pytest.raises(trt.CudaDriverError, match="torch is built for CUDA 13.0.*R580") as info:
        trt.check_torch_cuda((12, 8))
    assert isinstance(info.value, trt.GpuUnavailableError)
    assert trt.check_torch_cuda((13, 0)) == "13.0"


# ---------------------------------------------------------------- optimization profiles


@pytest.mark.parametrize("dims", [REAL, TINY], ids=["real", "tiny"])
@pytest.mark.parametrize("name", COMPONENTS)
def test_profile_bounds_names_and_static_dims(dims, name):
    spec = component_specs(dims)[name]
    profile = trt.optimization_profile(spec)
    dynamic_inputs = {t.name for t in spec.inputs if t.dynamic_axes()}
    assert set(profile) == dynamic_inputs and dynamic_inputs  # every component has a dynamic input
    for input_name, (lo, opt, hi) in profile.items():
        tensor = spec.tensor(input_name)
        assert len(lo) == len(opt) == len(hi) == len(tensor.shape)
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, int):
                assert lo[axis] == opt[axis] == hi[axis] == dim
            else:
                p = spec.profiles[dim]
                assert (lo[axis], opt[axis], hi[axis]) == (p.min, p.opt, p.max)
                assert 1 <= lo[axis] <= opt[axis] <= hi[axis]


def test_profile_shares_axis_sizes_between_inputs():
    profile = trt.optimization_profile(component_specs(REAL)["text"])
    assert profile["input_ids"] == profile["attention_mask"] == ((1, 32), (4, 32), (16, 32))


def test_profile_without_axis_profile_is_a_clear_error():
    spec = ComponentSpec(
        name="broken",
        inputs=(TensorSpec("x", "FP32", ("n", "k")),),
        outputs=(),
        profiles={"n": Profile(1, 2, 4)},
        parity_sizes=({"n": 1, "k": 1},),
    )
    with pytest.raises(ValueError, match=r"broken: dynamic axes \['k'\] have no Profile"):
        trt.optimization_profile(spec)


# ---------------------------------------------------------------- precision rules (data) and the parity gate

FUSED, EXPLICIT = trt.RULE_SETS["fused"], trt.RULE_SETS["explicit"]


@pytest.mark.parametrize(
    "kind,name",
    [
        ("NORMALIZATION", "/blocks.3/norm1/LayerNormalization"),
        ("REDUCE.AVG", "node_ReduceMean_17"),
        ("ELEMENTWISE.POW", "/neck/ln/Pow"),
        ("UNARY.SQRT", "/neck/ln/Sqrt"),
    ],
)
def test_norm_layers_stay_fp32_in_every_rule_set(kind, name):
    for rules in trt.RULE_SETS.values():
        for precision in ("fp16", "bf16"):
            assert trt.layer_precision(kind, name, rules, precision) == "fp32"


@pytest.mark.parametrize("kind,name", [("SOFTMAX", "/blocks.3/attn/Softmax"), ("SHUFFLE", "node_Softmax_157_output_3")])
def test_softmax_is_free_for_fused_attention_and_fp32_in_explicit(kind, name):
    assert trt.layer_precision(kind, name, FUSED, "fp16") == "fp16"
    assert trt.layer_precision(kind, name, EXPLICIT, "fp16") == "fp32"


@pytest.mark.parametrize(
    "kind,name",
    [
        ("CONVOLUTION", "/patch_embed/Conv"),
        ("MATRIX_MULTIPLY", "/blocks.0/attn/MatMul"),
        ("ELEMENTWISE.SUM", "/blocks.0/Add"),
        ("REDUCE.MAX", "/ReduceMax"),
        ("UNARY.EXP", "/Exp_2"),
    ],
)
def test_other_layers_take_the_build_precision(kind, name):
    for rules in trt.RULE_SETS.values():
        assert trt.layer_precision(kind, name, rules, "fp16") == "fp16"
        assert trt.layer_precision(kind, name, rules, "bf16") == "bf16"


def test_layers_of_norm_module_nodes_stay_fp32():
    nodes = frozenset({"node_Div_12", "node_Add_7"})
    assert trt.layer_precision("ELEMENTWISE.DIV", "node_Div_12", FUSED, "fp16", nodes) == "fp32"
    assert trt.layer_precision("ELEMENTWISE.SUM", "node_Add_7_1", FUSED, "fp16", nodes) == "fp32"  # parser sub-layer
    assert trt.layer_precision("ELEMENTWISE.DIV", "node_Div_1", FUSED, "fp16", nodes) == "fp16"
    assert trt.layer_precision("ELEMENTWISE.DIV", "node_Div_123", FUSED, "fp16", nodes) == "fp16"


def test_node_of_layer():
    nodes = {"node_Div_1", "node_Div_12", "a/b"}
    assert trt.node_of_layer("node_Div_12", nodes) == "node_Div_12"
    assert trt.node_of_layer("node_Div_12_output", nodes) == "node_Div_12"
    assert trt.node_of_layer("node_Div_123", nodes) is None
    assert trt.node_of_layer("a/b/c", nodes) == "a/b"


def test_fp32_build_keeps_every_layer_fp32():
    assert trt.layer_precision("CONVOLUTION", "/Conv", FUSED, "fp32") == "fp32"


def test_rule_sets_are_data():
    assert trt.fp32_kinds(FUSED.fp32_ops) == {"NORMALIZATION", "REDUCE.AVG", "ELEMENTWISE.POW", "UNARY.SQRT"}
    assert trt.fp32_kinds(EXPLICIT.fp32_ops) == trt.fp32_kinds(FUSED.fp32_ops) | {"SOFTMAX"}
    assert trt.fp32_kinds(["Softmax", "UnknownOp"]) == {"SOFTMAX"}
    assert trt.DEFAULT_LADDER[0] == "fused" and set(trt.DEFAULT_LADDER) <= set(trt.RULE_SETS)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        trt.layer_precision("SOFTMAX", "x", FUSED, "int8")


def _hand_written_norm_graph(path: Path) -> Path:
    """x → [LayerNorm2d written by hand: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div] → Add(+1) → y,
    with the class hierarchy torch's exporter records on each node."""

    def node(op, inputs, output, hierarchy, **attrs):
        n = helper.make_node(op, inputs, [output], name=f"node_{op}_{output}", **attrs)
        n.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value=str(hierarchy))
        return n

    norm = ["export.wrappers.ConceptHead", "transformers.models.sam3.modeling_sam3.Sam3LayerNorm2d", "aten.op"]
    top = ["export.wrappers.ConceptHead", "aten.add.Tensor"]
    nodes = [
        node("ReduceMean", ["x", "axes"], "u", norm),
        node("Sub", ["x", "u"], "d", norm),
        node("Pow", ["d", "two"], "d2", norm),
        node("ReduceMean", ["d2", "axes"], "var", norm),
        node("Add", ["var", "eps"], "ve", norm),
        node("Sqrt", ["ve"], "sd", norm),
        node("Div", ["d", "sd"], "n", norm),
        node("Add", ["n", "one"], "y", top),
    ]
    consts = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_hand_written_norm_keeps_its_add_and_div_in_fp32(tmp_path):
    path = _hand_written_norm_graph(tmp_path / "norm.onnx")
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a real, runnable graph
    nodes = trt.fp32_nodes(path, FUSED)
    assert nodes == {
        "node_ReduceMean_u",
        "node_Sub_d",
        "node_Pow_d2",
        "node_ReduceMean_var",
        "node_Add_ve",
        "node_Sqrt_sd",
        "node_Div_n",
    }  # all of the norm, not the Add after it
    assert trt.layer_precision("ELEMENTWISE.SUM", "node_Add_ve", FUSED, "fp16", nodes) == "fp32"
    assert trt.layer_precision("ELEMENTWISE.DIV", "node_Div_n", FUSED, "fp16", nodes) == "fp32"
    assert trt.layer_precision("ELEMENTWISE.SUM", "node_Add_y", FUSED, "fp16", nodes) == "fp16"
    assert trt.fp32_nodes(path, trt.FP32_RULES) == frozenset()


@pytest.mark.parametrize("name", COMPONENTS)
def test_node_scan_of_the_exported_graphs(tiny_artifacts, name):
    """On the real exports: `fused` pins norm ops and norm-module nodes but no Softmax, MatMul or Conv;
    `explicit` pins the same plus every Softmax."""
    graph = onnx.load(str(tiny_artifacts / f"{name}.onnx"), load_external_data=False).graph
    fused = trt.fp32_nodes(tiny_artifacts / f"{name}.onnx", FUSED)
    explicit = trt.fp32_nodes(tiny_artifacts / f"{name}.onnx", EXPLICIT)
    by_name = {n.name: n for n in graph.node}
    assert fused and fused <= set(by_name)
    assert {by_name[n].op_type for n in fused}.isdisjoint({"Softmax", "MatMul", "Gemm", "Conv"})
    in_norm = [any(c.endswith(("Norm", "Norm2d")) for c in trt.rules.node_module_classes(by_name[n])) for n in fused]
    assert all(ok or by_name[n].op_type in FUSED.fp32_ops for n, ok in zip(fused, in_norm))
    norms = {n.name for n in graph.node if n.op_type in ("LayerNormalization", "InstanceNormalization")}
    assert norms <= fused
    softmax = {n.name for n in graph.node if n.op_type == "Softmax"}
    assert explicit == fused | softmax
    assert bool(softmax) == (name != "mask")  # every component but the mask head (convolutions) has attention


def test_layers_map_to_nodes_through_parser_metadata():
    nodes = frozenset({"node_Add_7"})
    assert trt.onnx_nodes_of("[ONNX Layer: node_Add_7]") == ["node_Add_7"]
    assert trt.onnx_nodes_of("") == []
    # a layer the parser added for node_Add_7 (a broadcast shuffle) has an unrelated name
    assert (
        trt.layer_precision("SHUFFLE", "ONNXTRT_Broadcast_12", FUSED, "fp16", nodes, "[ONNX Layer: node_Add_7]")
        == "fp32"
    )
    assert (
        trt.layer_precision("SHUFFLE", "ONNXTRT_Broadcast_12", FUSED, "fp16", nodes, "[ONNX Layer: node_Mul_2]")
        == "fp16"
    )


def test_attempts_ladder():
    labels = [a.label for a in trt.attempts("vision", "fp16")]
    assert labels == ["fp16/fused", "fp16/explicit", "fp32"]
    assert [a.label for a in trt.attempts("vision", "bf16", fallback=False)] == ["bf16/fused"]
    assert [a.label for a in trt.attempts("text", "fp32")] == ["fp32"]
    assert trt.attempts("a_future_component", "fp16")[0].rules is FUSED  # generic: any component name


def test_component_ladder_override(monkeypatch):
    monkeypatch.setitem(trt.rules.COMPONENT_LADDER, "vision", ("explicit",))
    assert [a.label for a in trt.attempts("vision", "fp16")] == ["fp16/explicit", "fp32"]
    monkeypatch.setitem(trt.rules.COMPONENT_LADDER, "vision", ("nonsense",))
    with pytest.raises(ValueError, match="unknown precision rule sets"):
        trt.attempts("vision", "fp16")


def _gate(failures: dict):
    """try_one for first_passing: raises the error listed for an attempt's label, else returns facts."""
    tried = []

    def try_one(attempt):
        tried.append(attempt.label)
        if attempt.label in failures:
            raise failures[attempt.label]
        return {"built_precision": attempt.precision, "rules": attempt.rules.name}

    return try_one, tried


def test_parity_gate_falls_back_on_a_build_error():
    try_one, tried = _gate({"fp16/fused": trt.EngineBuildError("no FP32 tactic for a pinned layer")})
    facts = trt.first_passing(trt.attempts("vision", "fp16"), try_one, log=lambda m: None)
    assert tried == ["fp16/fused", "fp16/explicit"] and facts["rules"] == "explicit"
    assert facts["attempts"][0]["attempt"] == "fp16/fused" and "build failed" in facts["attempts"][0]["error"]


def test_parity_gate_falls_back_to_fp32_on_parity_failures():
    bad = trt.EngineParityError(
        "vision",
        [
            trt.parity_row(
                {"batch": 1}, "fpn_0", trt.parity_metrics(np.arange(4.0), -np.arange(4.0)), trt.PARITY_TOLERANCE["fp16"]
            )
        ],
    )
    try_one, tried = _gate({"fp16/fused": bad, "fp16/explicit": trt.EngineBuildError("out of memory")})
    facts = trt.first_passing(trt.attempts("vision", "fp16"), try_one, log=lambda m: None)
    assert tried == ["fp16/fused", "fp16/explicit", "fp32"] and facts["built_precision"] == "fp32"
    assert [a["error"].split(":")[0] for a in facts["attempts"]] == ["parity failed", "build failed"]


def test_parity_gate_raises_the_last_error():
    try_one, _ = _gate({"fp32": trt.EngineBuildError("parse error")})
    with pytest.raises(trt.EngineBuildError, match="parse error"):
        trt.first_passing(trt.attempts("text", "fp32"), try_one, log=lambda m: None)
    try_one, tried = _gate({"fp16/fused": trt.EngineBuildError("x")})
    with pytest.raises(trt.EngineBuildError):
        trt.first_passing(trt.attempts("text", "fp16", fallback=False), try_one, log=lambda m: None)
    assert tried == ["fp16/fused"]


def test_every_component_has_a_default_precision():
    assert set(trt.DEFAULT_PRECISION) == set(COMPONENTS)
    assert set(trt.DEFAULT_PRECISION.values()) <= set(trt.PRECISIONS)
    assert set(trt.PARITY_TOLERANCE) == set(trt.PRECISIONS)


def test_parse_precision_forms():
    names = list(COMPONENTS)
    assert trt.parse_precision(None, names) == trt.DEFAULT_PRECISION
    assert set(trt.parse_precision("fp32", names).values()) == {"fp32"}
    mixed = trt.parse_precision("vision=bf16, prompt=fp32", names)
    assert mixed == {**trt.DEFAULT_PRECISION, "vision": "bf16", "prompt": "fp32"}
    assert trt.parse_precision({"text": "fp32"}, ["text"]) == {"text": "fp32"}
    with pytest.raises(ValueError, match="not among the components"):
        trt.parse_precision("decoder=fp16", names)
    with pytest.raises(ValueError, match="precision must be one of"):
        trt.parse_precision("vision=fp8", names)


def test_check_components():
    assert trt.check_components(None) == list(COMPONENTS)
    assert trt.check_components("prompt,vision") == ["vision", "prompt"]
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['decoder'\]"):
        trt.check_components(["vision", "decoder"])


# ---------------------------------------------------------------- files


def test_engine_naming(tmp_path):
    directory = trt.engine_dir(tmp_path, "10.8.0.43", "NVIDIA H200")
    assert directory == tmp_path / "trt-10.8.0.43" / "NVIDIA-H200"
    assert trt.engine_dir(tmp_path, "10.8.0.43", "NVIDIA H100 80GB HBM3").name == "NVIDIA-H100-80GB-HBM3"
    assert trt.engine_path(directory, "vision") == directory / "vision.plan"
    assert trt.record_path(directory, "vision") == directory / "vision.plan.json"
    assert trt.sanitize("a/../b c:d") == "a-..-b-c-d"
    with pytest.raises(ValueError):
        trt.sanitize("///")


def _write_engine(directory: Path, payload: bytes, precision="fp16") -> None:
    """An engine file (opaque bytes: only its hash matters here) and its record."""
    directory.mkdir(parents=True, exist_ok=True)
    trt.engine_path(directory, "text").write_bytes(payload)
    record = {
        "onnx_sha256": "abc",
        "precision": precision,
        "tensorrt_version": trt.TENSORRT_VERSION,
        "engine_sha256": sha256(trt.engine_path(directory, "text")),
    }
    trt.record_path(directory, "text").write_text(json.dumps(record))


def test_engine_is_current_checks_inputs_and_hash(tmp_path):
    assert not trt.engine_is_current(tmp_path, "text", "abc", "fp16", trt.TENSORRT_VERSION)
    _write_engine(tmp_path, b"serialized engine bytes")
    assert trt.engine_is_current(tmp_path, "text", "abc", "fp16", trt.TENSORRT_VERSION)
    assert not trt.engine_is_current(tmp_path, "text", "other onnx", "fp16", trt.TENSORRT_VERSION)
    assert not trt.engine_is_current(tmp_path, "text", "abc", "fp32", trt.TENSORRT_VERSION)
    assert not trt.engine_is_current(tmp_path, "text", "abc", "fp16", "10.9.0.34")
    trt.engine_path(tmp_path, "text").write_bytes(b"truncated")
    assert not trt.engine_is_current(tmp_path, "text", "abc", "fp16", trt.TENSORRT_VERSION)


def test_engine_is_rebuilt_when_its_rules_change(tmp_path, monkeypatch):
    key = trt.attempts_key(trt.attempts("text", "fp16"))
    _write_engine(tmp_path, b"engine")
    record = json.loads(trt.record_path(tmp_path, "text").read_text())
    trt.record_path(tmp_path, "text").write_text(json.dumps({**record, "rules_key": key}))
    assert trt.engine_is_current(tmp_path, "text", "abc", "fp16", trt.TENSORRT_VERSION, key)
    edited = trt.PrecisionRules(
        "fused", trt.RULE_SETS["fused"].fp32_ops + ("Exp",), trt.RULE_SETS["fused"].fp32_modules
    )
    monkeypatch.setitem(trt.RULE_SETS, "fused", edited)
    new_key = trt.attempts_key(trt.attempts("text", "fp16"))
    assert new_key != key and not trt.engine_is_current(tmp_path, "text", "abc", "fp16", trt.TENSORRT_VERSION, new_key)
    assert trt.attempts_key(trt.attempts("text", "fp16", fallback=False)) != new_key


def test_timing_cache_roundtrip(tmp_path):
    path = tmp_path / trt.TIMING_CACHE
    assert trt.load_timing_cache(path) == b""
    trt.save_timing_cache(path, memoryview(b"\x00cache\xff"))
    assert trt.load_timing_cache(path) == b"\x00cache\xff"
    assert [p.name for p in tmp_path.iterdir()] == [trt.TIMING_CACHE]  # no temp file left behind


def test_libnvinfer_version_from_library_name(tmp_path):
    assert trt.libnvinfer_version(search=(tmp_path,)) is None
    for name in ("libnvinfer.so.10", "libnvinfer.so.9.3.0", "libnvinfer.so.10.8.0", "libnvinfer_plugin.so.10.9.0"):
        (tmp_path / name).write_bytes(b"")  # empty files: only the names are read
    assert trt.libnvinfer_version(search=(tmp_path / "absent", tmp_path)) == "10.8.0"


def test_library_release_matches_the_pin():
    assert trt.same_tensorrt_release("10.8.0", "10.8.0.43")
    assert trt.same_tensorrt_release("10.8.0.43", "10.8.0.43")
    assert not trt.same_tensorrt_release("10.8.0.40", "10.8.0.43")
    assert not trt.same_tensorrt_release("10.9.0", "10.8.0.43")
    assert not trt.same_tensorrt_release("10.80.0", "10.8.0.43")


def test_version_mismatch_is_refused():
    trt.check_tensorrt_version(trt.TENSORRT_VERSION)
    with pytest.raises(trt.TensorRTVersionError, match=trt.TENSORRT_PIP.replace("+", r"\+")):
        trt.check_tensorrt_version("10.9.0.34")


# ---------------------------------------------------------------- parity metrics


def test_parity_metrics():
    a = np.linspace(-1, 1, 50, dtype=np.float32).reshape(5, 10)
    same = trt.parity_metrics(a, a.copy())
    assert same == {"cosine": pytest.approx(1.0), "max_abs": 0.0, "mean_abs": 0.0, "shape_ok": True}
    scaled = trt.parity_metrics(a, 2 * a)
    assert scaled["cosine"] == pytest.approx(1.0) and scaled["max_abs"] == pytest.approx(1.0)
    assert trt.parity_metrics(a, -a)["cosine"] == pytest.approx(-1.0)
    assert trt.parity_metrics(a, a[:4])["shape_ok"] is False
    assert trt.parity_metrics(np.zeros(3), np.zeros(3))["cosine"] == 1.0
    assert trt.parity_metrics(np.zeros(3), np.ones(3))["cosine"] == 0.0


def test_parity_row_verdicts():
    tol = trt.Tolerance(min_cosine=0.999, atol=1e-2)
    good = trt.parity_row({"batch": 3}, "fpn_0", trt.parity_metrics(np.arange(9.0), np.arange(9.0) + 1e-3), tol)
    assert good["ok"] and good["sizes"] == "batch=3"
    # one tiny logit: cosine only sees the sign; the abs tolerance decides
    tiny = trt.parity_row(
        {"prompts": 1}, "presence_logits", trt.parity_metrics(np.array([0.002]), np.array([-0.003])), tol
    )
    assert tiny["cosine"] == pytest.approx(-1.0) and tiny["ok"]
    bad = trt.parity_row({"prompts": 1}, "pred_boxes", trt.parity_metrics(np.arange(9.0), np.arange(9.0)[::-1]), tol)
    assert not bad["ok"]
    missing = trt.parity_row({}, "pred_masks", trt.parity_metrics(np.ones(4), np.empty(0)), tol)
    assert not missing["ok"]


def test_engine_parity_error_lists_every_failure():
    tol = trt.PARITY_TOLERANCE["fp16"]
    rows = [
        trt.parity_row({"batch": b}, out, trt.parity_metrics(np.arange(1.0, 9.0), np.arange(8.0, 0, -1)), tol)
        for b in (1, 3)
        for out in ("fpn_0", "track_2")
    ]
    err = trt.EngineParityError("vision", rows)
    text = str(err)
    assert text.startswith("vision engine: 4 output(s) outside tolerance")
    assert text.count("fpn_0") == 2 and text.count("track_2") == 2 and "batch=3" in text


def test_latency_summary():
    summary = trt.latency_summary([0.001, 0.002, 0.003, 0.004])
    assert summary["iterations"] == 4 and summary["min_ms"] == pytest.approx(1.0)
    assert summary["p50_ms"] == pytest.approx(2.5) and summary["mean_ms"] == pytest.approx(2.5)
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]
    with pytest.raises(ValueError):
        trt.latency_summary([])


# ---------------------------------------------------------------- the ONNX Runtime half of the parity check


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("name", COMPONENTS)
def test_reference_outputs_have_spec_shapes(artifacts, name):
    spec = load_manifest(artifacts).specs()[name]
    session = trt.onnx_session(artifacts / spec.onnx_file)
    for sizes in spec.parity_sizes:
        outputs = trt.run_onnx(session, example_inputs(spec, sizes, TINY.image_size))
        assert {k: v.shape for k, v in outputs.items()} == {t.name: t.resolve(sizes) for t in spec.outputs}
        rows = [
            trt.parity_row(sizes, k, trt.parity_metrics(v, v), trt.PARITY_TOLERANCE["fp16"]) for k, v in outputs.items()
        ]
        assert all(r["ok"] for r in rows)


# ---------------------------------------------------------------- refusals without a GPU


@NO_GPU
def test_require_gpu_raises_with_instructions():
    with pytest.raises(trt.GpuUnavailableError) as info:
        trt.require_gpu()
    message = str(info.value)
    assert "no NVIDIA driver" in message and "modal run modal_triton.py::build" in message
    with pytest.raises(trt.GpuUnavailableError, match="no NVIDIA driver"):
        trt.require_gpu(need_tensorrt=False)


@NO_GPU
def test_build_engines_refuses_without_gpu(artifacts, tmp_path):
    with pytest.raises(trt.GpuUnavailableError, match="cannot build or run TensorRT engines here"):
        trt.build_engines(artifacts, tmp_path / "engines")
    assert not (tmp_path / "engines").exists()


def test_build_engines_checks_arguments_before_the_gpu(artifacts, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        trt.build_engines(artifacts, tmp_path, precision="int8")
    with pytest.raises(ValueError, match="unknown component"):
        trt.build_engines(artifacts, tmp_path, components="decoder")


@NO_GPU
def test_engine_runs_refuse_without_gpu(artifacts, tmp_path):
    spec = load_manifest(artifacts).specs()["text"]
    with pytest.raises(trt.GpuUnavailableError):
        trt.run_engine(tmp_path / "text.plan", {})
    with pytest.raises(trt.GpuUnavailableError):
        trt.compare_engine(tmp_path / "text.plan", artifacts / spec.onnx_file, spec, image_size=TINY.image_size)


@NO_GPU
def test_cli_exits_2_with_the_reason(artifacts, tmp_path, capsys):
    assert trt.main_trt(["--artifacts", str(artifacts), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot build or run TensorRT engines here") and "tensorrt-cu12==" in err
    assert trt.main_trt(["--artifacts", str(artifacts), "--precision", "fp8"]) == 2
    assert "precision must be one of" in capsys.readouterr().err


@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA driver")
def test_require_gpu_names_the_device():
    pytest.importorskip("tensorrt")
    assert trt.require_gpu().strip()
