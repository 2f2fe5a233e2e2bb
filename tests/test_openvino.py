"""OpenVINO as the cpu target's component runtime: precision choice, bf16 gate, runners, repository, CLI.

Real OpenVINO and ONNX Runtime sessions on real graphs (the fake graphs of tests/test_repository.py
and the tiny model's exported graphs); real tritonserver for the served checks. bf16 tests skip,
saying why, on a CPU whose OpenVINO plugin does not list BF16.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from test_repository import TINY, make_fake_artifacts

from export.__main__ import bf16_gate
from export.inputs import example_inputs
from export.manifest import load_manifest
from export.precision import (
    GATE_COSINE,
    REPORT_NAME,
    RUNTIME_MODULE,
    GateResult,
    PrecisionError,
    component_precisions,
    cosine,
    cpu_capabilities,
    cpu_key,
    gate,
    gate_component,
    resolve_precision,
    runtime_module,
)
from export.repository import RepositoryError, build_repository, read_precisions, static_shapes
from sam3_spec import ComponentSpec, Profile, TensorSpec, component_specs
from server.cli import _print_precisions, parse_args
from server.triton import TritonServer
from tests.pbtxt import config_parameters, parse_config_text

pytestmark = pytest.mark.timeout(300)
RT = runtime_module()


def require_bf16():
    capabilities = cpu_capabilities()
    if "BF16" not in capabilities:
        pytest.skip(f"this CPU has no bf16 (OpenVINO capabilities {capabilities}): auto means fp32 here")


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    return make_fake_artifacts(tmp_path_factory.mktemp("fake"))


# ---------------------------------------------------------------- precision choice


@pytest.mark.parametrize(
    "requested, runtime, capabilities, expected",
    [
        ("auto", "openvino", ["BF16", "FP32", "INT8"], "bf16"),
        ("auto", "openvino", ["FP32", "INT8", "BIN"], "fp32"),
        ("fp32", "openvino", ["BF16", "FP32"], "fp32"),
        ("bf16", "openvino", ["BF16", "FP32"], "bf16"),
        ("auto", "onnxruntime", ["BF16", "FP32"], "fp32"),
    ],
)
def test_resolve_precision(requested, runtime, capabilities, expected):
    assert resolve_precision(requested, runtime, capabilities) == expected


@pytest.mark.parametrize(
    "requested, runtime, capabilities, message",
    [
        ("bf16", "openvino", ["FP32"], "no bf16 support"),
        ("bf16", "onnxruntime", ["BF16"], "fp32 only"),
        ("fp16", "openvino", ["BF16"], "precision must be one of"),
        ("auto", "tensorrt", ["BF16"], "runtime one of"),
    ],
)
def test_resolve_precision_refuses_what_cannot_run(requested, runtime, capabilities, message):
    with pytest.raises(PrecisionError, match=message):
        resolve_precision(requested, runtime, capabilities)


def test_this_cpu_capabilities_come_from_openvino():
    capabilities = cpu_capabilities()
    assert "FP32" in capabilities
    assert resolve_precision("auto", "openvino") == ("bf16" if "BF16" in capabilities else "fp32")


def test_cosine():
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    assert cosine(a, 2 * a) == pytest.approx(1.0) and cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0


# ---------------------------------------------------------------- runners


@pytest.mark.parametrize("component", ["vision", "text", "concept", "prompt"])
def test_openvino_fp32_runner_equals_onnxruntime_on_fake_graphs(fake, component):
    spec = component_specs(TINY)[component]
    ov_runner = RT.open_runner("openvino", fake / spec.onnx_file, "fp32", 1)
    ort_runner = RT.open_runner("onnxruntime", fake / spec.onnx_file, "fp32", 1)
    assert ov_runner.inputs() == ort_runner.inputs() and ov_runner.outputs() == ort_runner.outputs()
    assert [n for n, _, _ in ov_runner.outputs()] == [t.name for t in spec.outputs]
    names, feeds = [t.name for t in spec.outputs], example_inputs(spec, spec.parity_sizes[-1], TINY.image_size)
    for got, want in zip(ov_runner.run(names, feeds), ort_runner.run(names, feeds)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_openvino_fp32_equals_onnxruntime_on_the_tiny_model(tiny_artifacts):
    """The export parity tolerance (atol = rtol = 1e-4) holds for OpenVINO fp32 as for ONNX Runtime."""
    manifest = load_manifest(tiny_artifacts)
    for spec in manifest.specs().values():
        path, names = tiny_artifacts / spec.onnx_file, [t.name for t in spec.outputs]
        ov_runner, ort_runner = (RT.open_runner(r, path, "fp32", 0) for r in ("openvino", "onnxruntime"))
        for sizes in spec.parity_sizes:
            feeds = example_inputs(spec, sizes, manifest.dims.image_size, seed=3)
            for name, got, want in zip(names, ov_runner.run(names, feeds), ort_runner.run(names, feeds)):
                scale = float(np.abs(want).max())
                assert np.abs(got - want).max() <= 1e-4 + 1e-4 * scale, (spec.name, sizes, name)


def test_openvino_static_copies_equal_the_dynamic_one_on_the_tiny_model(tiny_artifacts):
    """Requests at each static size set (e.g. the text encoder's batch of 4, the prompt head's one point per
    object at any object count) run in their own static-shape copy; its fp32 results equal the dynamic copy's.
    Other sizes run in the dynamic copy."""
    manifest = load_manifest(tiny_artifacts)
    for spec in manifest.specs().values():
        path, names = tiny_artifacts / spec.onnx_file, [t.name for t in spec.outputs]
        runner = RT.open_runner("openvino", path, "fp32", 0, static_shapes=static_shapes(spec))
        dynamic = RT.open_runner("openvino", path, "fp32", 0)
        assert len(runner.static_requests) == len(spec.static_size_sets()) and not dynamic.static_requests
        chosen = set()
        for static in spec.static_size_sets():
            for sizes in spec.filled(static):  # every size of an axis the copy leaves dynamic: min, opt, max
                feeds = example_inputs(spec, sizes, manifest.dims.image_size, seed=5)
                chosen.add(id(runner.request_for(feeds)))
                for name, got, want in zip(names, runner.run(names, feeds), dynamic.run(names, feeds)):
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{spec.name} {sizes} {name}")
        assert len(chosen) == len(spec.static_size_sets()) and id(runner.request) not in chosen
        other = spec.sizes("max")
        assert runner.request_for(example_inputs(spec, other, manifest.dims.image_size, seed=5)) is runner.request


def test_static_copies_that_leave_an_axis_dynamic():
    """The prompt head's copies fix the points per object, not the object count (see the next tests); the
    concept and mask copies fix one prompt (a cpu call's concept), not the exemplar boxes or kept queries."""
    specs = component_specs(TINY)
    assert specs["prompt"].static_size_sets() == [{"points": 1}, {"points": 2}]
    assert specs["prompt"].filled({"points": 1}) == [{"points": 1, "objects": 1}, {"points": 1, "objects": 64}]
    assert specs["concept"].static_size_sets() == specs["mask"].static_size_sets() == [{"prompts": 1}]
    assert static_shapes(specs["mask"])[0]["queries"] == [1, -1, TINY.hidden]
    assert specs["text"].filled({"batch": 4}) == [{"batch": 4}]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("component", ["vision", "text"])
def test_an_item_gets_the_same_result_alone_or_batched(tiny_artifacts, component, precision):
    """Triton and the orchestrator batch the images (concepts) of concurrent requests: as served (with its
    static copies), a component must give an item the same bits alone or in a batch of 2 or 4."""
    if precision == "bf16":
        require_bf16()
    manifest = load_manifest(tiny_artifacts)
    spec = manifest.specs()[component]
    runner = RT.open_runner(
        "openvino", tiny_artifacts / spec.onnx_file, precision, 0, static_shapes=static_shapes(spec)
    )
    batch = example_inputs(spec, {spec.batch_axis: 4}, manifest.dims.image_size, seed=6)
    names = [t.name for t in spec.outputs]
    alone = runner.run(names, {k: v[:1] for k, v in batch.items()})
    for size in (2, 4):
        together = runner.run(names, {k: v[:size] for k, v in batch.items()})
        for name, one, many in zip(names, alone, together):
            np.testing.assert_array_equal(one[0], many[0], err_msg=f"{component} {name} in a batch of {size}")


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_shared_outputs_equal_fresh_ones_and_fresh_ones_outlive_the_next_run(fake, runtime):
    """``run(shared=True)`` may hand out the runtime's own output buffers (model.py uses it for the only run of
    an execute()); its values equal a fresh run's. Fresh outputs (the default) stay intact through later runs."""
    spec = component_specs(TINY)["vision"]
    runner, names = RT.open_runner(runtime, fake / spec.onnx_file, "fp32", 1), [t.name for t in spec.outputs]
    first, second = (example_inputs(spec, {"batch": 2}, TINY.image_size, seed=s) for s in (1, 2))
    fresh = runner.run(names, first)
    kept = [a.copy() for a in fresh]
    for got, want in zip(runner.run(names, first, shared=True), kept):
        np.testing.assert_array_equal(got, want)
    runner.run(names, second, shared=True)
    runner.run(names, second)
    for got, want in zip(fresh, kept):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_object_gets_the_same_prompt_head_result_alone_or_merged(tiny_artifacts, precision):
    """The orchestrator merges the clicks and boxes of concurrent requests on one image into one call of
    several objects. The prompt head, as served (with its static copies), must give each object the same
    bits either way: a static copy for one object would not (its bf16 kernels differ from the dynamic graph's)."""
    if precision == "bf16":
        require_bf16()
    manifest = load_manifest(tiny_artifacts)
    spec = manifest.specs()["prompt"]
    runner = RT.open_runner(
        "openvino", tiny_artifacts / spec.onnx_file, precision, 0, static_shapes=static_shapes(spec)
    )
    for points, labels in ((1, [1]), (2, [2, 3]), (3, [1, 0, 1])):
        merged = example_inputs(spec, {"objects": 3, "points": points}, manifest.dims.image_size, seed=4)
        merged["point_labels"][:] = labels
        alone = merged | {"point_coords": merged["point_coords"][:1], "point_labels": merged["point_labels"][:1]}
        names = [t.name for t in spec.outputs]
        for name, one, many in zip(names, runner.run(names, alone), runner.run(names, merged)):
            np.testing.assert_array_equal(one[0], many[0], err_msg=f"{name} at {points} points")


def test_each_precision_compiles_into_its_own_model_cache(tiny_artifacts, tmp_path):
    """OpenVINO's CPU plugin keys a cached blob by graph and device only: without a cache per precision, a bf16
    runner loaded the blob an fp32 runner had compiled (the bench model's auto copy then gave NaN masks).
    Served outputs must not depend on what compiled into the cache before."""
    require_bf16()
    manifest = load_manifest(tiny_artifacts)
    spec, cache = manifest.specs()["prompt"], tmp_path / "cache"
    path, names = tiny_artifacts / spec.onnx_file, [t.name for t in spec.outputs]
    feeds = example_inputs(spec, spec.filled(spec.static_size_sets()[0])[0], manifest.dims.image_size, seed=3)
    RT.OpenVinoRunner(path, "fp32", 0, str(cache), static_shapes=static_shapes(spec))  # fills the cache first
    served = RT.OpenVinoRunner(path, "bf16", 0, str(cache), static_shapes=static_shapes(spec))
    fresh = RT.OpenVinoRunner(path, "bf16", 0, "", static_shapes=static_shapes(spec))
    assert served.request_for(feeds) is not served.request, "the static copy runs these shapes"
    for name, got, want in zip(names, served.run(names, feeds), fresh.run(names, feeds)):
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["bf16-threadsdefault", "fp32-threadsdefault"]


def test_instances_compiling_one_graph_into_one_cache_take_turns(tiny_artifacts, tmp_path):
    """Two instances of a model compiling the same graph into one empty OpenVINO cache at once made one fail to
    load (it read the other's half-written blob); a runner now waits while another holds the graph's lock."""
    spec = load_manifest(tiny_artifacts).specs()["prompt"]
    path, cache, built = tiny_artifacts / spec.onnx_file, str(tmp_path / "cache"), threading.Event()

    def build():
        RT.OpenVinoRunner(path, "fp32", 0, cache, static_shapes=static_shapes(spec))
        built.set()

    with RT.compile_lock(cache, path):  # as another instance holds it while it compiles
        worker = threading.Thread(target=build)
        worker.start()
        assert not built.wait(5), "the runner compiled while another instance held the cache's lock"
    worker.join(timeout=300)
    assert built.is_set() and (tmp_path / "cache" / f".lock-{path.name}").is_file()


def test_a_static_copy_runs_its_own_precision(tiny_artifacts, tmp_path):
    """A component whose dynamic graph failed the bf16 gate serves fp32 while its static copy, which passed its
    own, runs bf16: requests at the copy's shapes get exactly a bf16 copy's outputs (from the bf16 model cache),
    every other request the fp32 graph's."""
    require_bf16()
    manifest = load_manifest(tiny_artifacts)
    spec, cache = manifest.specs()["concept"], tmp_path / "cache"
    path, names, shapes = tiny_artifacts / spec.onnx_file, [t.name for t in spec.outputs], static_shapes(spec)
    at_copy = example_inputs(spec, {"prompts": 1, "boxes": 2}, manifest.dims.image_size, seed=5)
    other = example_inputs(spec, spec.parity_sizes[-1], manifest.dims.image_size, seed=6)
    mixed = RT.OpenVinoRunner(path, "fp32", 0, str(cache), static_shapes=shapes, static_precisions=["bf16"])
    bf16 = RT.OpenVinoRunner(path, "bf16", 0, "", static_shapes=shapes)
    fp32 = RT.OpenVinoRunner(path, "fp32", 0, "", static_shapes=shapes)
    assert (mixed.precision, mixed.static_precisions) == ("fp32", ["bf16"])
    for feeds, want in ((at_copy, bf16), (other, fp32)):
        for name, got, expected in zip(names, mixed.run(names, feeds), want.run(names, feeds)):
            np.testing.assert_array_equal(got, expected, err_msg=name)
    assert any(not np.array_equal(a, b) for a, b in zip(fp32.run(names, at_copy), bf16.run(names, at_copy)))
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["bf16-threadsdefault", "fp32-threadsdefault"]
    with pytest.raises(RT.RuntimeLoadError, match="1 static precisions for 0 static copies"):
        RT.OpenVinoRunner(path, "fp32", 0, static_precisions=["bf16"])
    with pytest.raises(RT.RuntimeLoadError, match="precision must be one of"):
        RT.OpenVinoRunner(path, "fp32", 0, static_shapes=shapes, static_precisions=["fp16"])


def test_runner_refuses_missing_file_and_bf16_on_onnxruntime(fake, tmp_path):
    with pytest.raises(RT.RuntimeLoadError, match="not found"):
        RT.open_runner("openvino", tmp_path / "absent.onnx", "fp32", 0)
    with pytest.raises(RT.RuntimeLoadError, match="fp32 only"):
        RT.open_runner("onnxruntime", fake / "text.onnx", "bf16", 0)
    with pytest.raises(RT.RuntimeLoadError, match="runtime must be one of"):
        RT.open_runner("tensorrt", fake / "text.onnx", "fp32", 0)


# ---------------------------------------------------------------- the bf16 gate


def cancelling_graph(path: Path) -> ComponentSpec:
    """y = x·W1 − x·W2 with W2 = W1 + 1e-3·R: exact in fp32, mostly rounding noise in bf16."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    w2 = (w1 + 1e-3 * rng.standard_normal((16, 16))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("MatMul", ["x", "w2"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cancel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        initializer=[onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path / "cancel.onnx")
    return ComponentSpec(
        "cancel",
        inputs=(TensorSpec("x", "FP32", ("batch", 16)),),
        outputs=(TensorSpec("y", "FP32", ("batch", 16)),),
        profiles={"batch": Profile(1, 1, 4)},
        parity_sizes=({"batch": 1}, {"batch": 3}),
        batch_axis="batch",
    )


def test_gate_catches_a_graph_that_bf16_breaks(tmp_path):
    require_bf16()
    spec = cancelling_graph(tmp_path)
    result = gate_component(tmp_path / "cancel.onnx", spec, image_size=16)
    assert not result.ok and result.worst()[0] == "y" and result.worst()[1] < GATE_COSINE
    lines = []
    assert component_precisions(tmp_path, {"cancel": spec}, 16, "bf16", lines.append) == {"cancel": "fp32"}
    assert "cancel: bf16 failed its parity gate" in lines[-1] and "serving fp32" in lines[-1]


def test_tiny_model_gate_and_the_report_is_reused(tiny_artifacts, tmp_path):
    """vision, text, concept and mask pass with a wide margin (≥ 0.99995 here); the tiny prompt head lands
    near the threshold (0.9995-0.9996 on two CPUs), so only its report's structure is asserted."""
    require_bf16()
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, artifacts, ignore=shutil.ignore_patterns("tiny-checkpoint", REPORT_NAME))
    manifest, lines = load_manifest(artifacts), []
    results = gate(artifacts, manifest.specs(), manifest.dims.image_size, lines.append)
    assert all(results[n].ok and all(results[n].static_ok) for n in ("vision", "text", "concept", "mask"))
    assert results["prompt"].worst()[0] == "pred_masks" and len(lines) == len(results)
    assert [sorted(c) for c in results["prompt"].static_cosines] == [["iou_scores", "pred_masks"]] * 2
    # the concept copy's presence logit is one value per input: over several inputs its cosine says something
    assert 0.9995 <= results["concept"].static_cosines[0]["presence_logits"] < 1.0
    report = json.loads((artifacts / REPORT_NAME).read_text())
    assert set(report) == set(manifest.specs())
    assert all(report[n]["static_ok"] == results[n].static_ok and report[n]["ok"] == results[n].ok for n in report)
    gate(artifacts, manifest.specs(), manifest.dims.image_size, lines.append)
    assert len(lines) == len(results), "a fresh report is reused, nothing runs again"
    os.utime(artifacts / "text.onnx")  # a re-exported graph: its entry is stale
    gate(artifacts, manifest.specs(), manifest.dims.image_size, lines.append)
    assert lines[-1].startswith("bf16 gate text")
    report = json.loads((artifacts / REPORT_NAME).read_text())
    report["mask"]["key"]["cpu"] = "another CPU"  # artifacts moved to another machine: its bf16 kernels differ
    (artifacts / REPORT_NAME).write_text(json.dumps(report))
    gate(artifacts, manifest.specs(), manifest.dims.image_size, lines.append)
    assert lines[-1].startswith("bf16 gate mask") and len(lines) == len(results) + 2
    # the spec's static copies changed (model code updated, same graph): static_ok holds one verdict per copy,
    # so an entry for other copies is stale; here auto mode's copy goes and the box (opt) copy comes back
    specs = manifest.specs()
    specs["prompt"] = dataclasses.replace(specs["prompt"], static_sizes=(), static_opt=True)
    again = gate(artifacts, specs, manifest.dims.image_size, lines.append)
    assert lines[-1].startswith("bf16 gate prompt") and len(lines) == len(results) + 3
    assert len(again["prompt"].static_cosines) == 1


def test_the_gate_key_names_the_cpu_and_its_bf16_instructions(tmp_path):
    pytest.importorskip("openvino")
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    key = cpu_key(fake)
    assert key.endswith(" amx_bf16 amx_tile avx512_bf16 avx512f") and len(key) > len(
        " amx_bf16 amx_tile avx512_bf16 avx512f"
    )
    assert not cpu_key(tmp_path / "missing").endswith("avx512f")


def test_a_component_failing_its_gate_is_served_fp32_and_logged(fake, tmp_path, capsys):
    """The gate result the build reads (precision_report.json, as `python -m export verify` writes it)."""
    require_bf16()
    artifacts = tmp_path / "artifacts"
    shutil.copytree(fake, artifacts)
    specs = component_specs(TINY)
    gate(artifacts, specs, TINY.image_size, log=lambda _: None)
    report = json.loads((artifacts / REPORT_NAME).read_text())
    report["text"]["cosines"] = {"text_features": 0.9}
    report["text"]["static_cosines"][0]["text_features"] = 0.99  # its copy fails too
    report["concept"]["cosines"]["presence_logits"] = 0.9994  # the dynamic graph fails, its one-prompt copy passes
    report["prompt"]["static_cosines"][0]["pred_masks"] = 0.99  # the static copy of auto mode's call
    (artifacts / REPORT_NAME).write_text(json.dumps(report))
    lines = []
    repo = build_repository(artifacts, tmp_path / "repo", "cpu", precision="auto", models=list(specs), log=lines.append)
    record = read_precisions(repo)
    assert record["components"] == {
        "vision": "bf16",
        "text": "fp32",
        "concept": "fp32",
        "mask": "bf16",
        "prompt": "bf16",
    }
    assert record["static_precisions"] == {
        "vision": [],
        "text": ["fp32"],
        "concept": ["bf16"],
        "mask": ["bf16"],
        "prompt": ["bf16"],
    }
    expected = [
        "text: bf16 failed its parity gate (cosine 0.900000 < 0.9995 on 'text_features' vs OpenVINO fp32): serving fp32",
        "concept: bf16 failed its parity gate (cosine 0.999400 < 0.9995 on 'presence_logits' vs OpenVINO fp32): "
        "serving fp32; its static copies at [{'prompts': 1}] pass theirs and run bf16",
    ]
    static = "prompt: the static copies at [{'points': 1}] failed the bf16 gate"
    assert lines[:2] == expected and lines[2].startswith(static) and len(lines) == 3
    params = config_parameters(parse_config_text((repo / "sam3_text" / "config.pbtxt").read_text()))
    assert params["precision"] == "fp32" and params["runtime"] == "openvino"
    assert json.loads(params["static_shapes"]) == static_shapes(specs["text"])  # fp32: every copy
    assert json.loads(params["static_precisions"]) == ["fp32"]
    params = config_parameters(parse_config_text((repo / "sam3_concept" / "config.pbtxt").read_text()))
    assert params["precision"] == "fp32" and json.loads(params["static_precisions"]) == ["bf16"]
    assert json.loads(params["static_shapes"]) == static_shapes(specs["concept"])
    params = config_parameters(parse_config_text((repo / "sam3_prompt" / "config.pbtxt").read_text()))
    kept = [{"points": 2}]  # the one-point copy dropped
    assert params["precision"] == "bf16" and json.loads(params["static_shapes"]) == static_shapes(specs["prompt"], kept)
    assert record["static_copies"]["prompt"] == kept
    _print_precisions(repo)
    assert "text fp32, concept fp32 (static copies bf16), mask bf16" in capsys.readouterr().out


def test_gate_result_worst():
    result = GateResult("x", {"a": 0.99999, "b": 0.9990})
    assert not result.ok and result.worst() == ("b", 0.9990)


# ---------------------------------------------------------------- repository


def test_repository_records_runtime_precision_cache_and_copies_the_runtime_module(fake, tmp_path):
    repo = build_repository(fake, tmp_path / "repo", "cpu", precision="fp32", models=["text", "concept"])
    record = read_precisions(repo)
    assert record == {
        "runtime": "openvino",
        "threads": 0,
        "cache_dir": str((tmp_path / "openvino-cache-repo").resolve()),
        "components": {"text": "fp32", "concept": "fp32"},
        "static_copies": {"text": [{"batch": 4}], "concept": [{"prompts": 1}]},
        "static_precisions": {"text": ["fp32"], "concept": ["fp32"]},
    }
    params = config_parameters(parse_config_text((repo / "sam3_concept" / "config.pbtxt").read_text()))
    assert params["precision"] == "fp32" and params["cache_dir"] == record["cache_dir"]
    assert json.loads(params["shared_axes"]) == {
        "prompts": [["text_features", 0], ["text_mask", 0], ["boxes", 0], ["box_labels", 0], ["box_valid", 0]],
        "boxes": [["boxes", 1], ["box_labels", 1], ["box_valid", 1]],
    }
    [static] = json.loads(params["static_shapes"])
    assert static["text_features"] == [1, 32, 16] and static["boxes"] == [1, -1, 4] and static["fpn_2"] == [1, 16, 4, 4]
    assert (repo / "sam3_concept" / "1" / "component_runtime.py").is_file()


def test_repository_with_onnxruntime(fake, tmp_path):
    repo = build_repository(fake, tmp_path / "repo", "cpu", runtime="ort", models=["text"])
    assert read_precisions(repo) == {
        "runtime": "onnxruntime",
        "threads": 0,
        "cache_dir": "",
        "components": {"text": "fp32"},
        "static_copies": {},  # ONNX Runtime compiles no static copies
        "static_precisions": {},
    }
    with pytest.raises(RepositoryError, match="fp32 only"):
        build_repository(fake, tmp_path / "other", "cpu", runtime="ort", precision="bf16")
    with pytest.raises(RepositoryError, match="runtime must be one of"):
        build_repository(fake, tmp_path / "other", "cpu", runtime="tensorrt")


def test_gpu_repository_has_no_precision_record(fake, tmp_path):
    assert read_precisions(build_repository(fake, tmp_path / "repo", "gpu", models=["text"])) == {}
    with pytest.raises(RepositoryError, match="gpu target's precision"):
        build_repository(fake, tmp_path / "other", "gpu", precision="bf16")


# ---------------------------------------------------------------- served, both runtimes


@pytest.mark.parametrize("runtime, precision", [("ort", "fp32"), ("openvino", "auto")])
def test_served_text_model_on_each_runtime(fake, tmp_path, runtime, precision):
    """The same config.pbtxt contract on either runtime; OpenVINO fills its model cache at load."""
    repo = build_repository(
        fake, tmp_path / "repo", "cpu", runtime=runtime, precision=precision, models=["text"], intra_op_threads=1
    )
    config_file = repo / "sam3_text" / "config.pbtxt"
    config = config_file.read_text()
    assert "max_queue_delay_microseconds: 0" in config
    # the batcher waits up to 2 s to join requests: the concurrent ones below run as one (or a few) runs
    config_file.write_text(config.replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 2000000"))
    spec = component_specs(TINY)["text"]
    batches = [example_inputs(spec, {"batch": 2}, TINY.image_size, seed=s) for s in range(8)]
    with TritonServer(repo, ready_timeout_s=120) as server:
        client = httpclient.InferenceServerClient(server.http_address)
        got = client.infer("sam3_text", _text_inputs(batches[0])).as_numpy("text_features")
        # a joint run's outputs are views of the runtime's buffers until the responses are copied out
        # (model.py, ``shared``): every request must still get its own values
        with ThreadPoolExecutor(len(batches)) as pool:
            together = list(pool.map(lambda b: _served_text(server.http_address, b), batches))
        stats = client.get_inference_statistics("sam3_text")["model_stats"][0]
        client.close()
    assert int(stats["execution_count"]) < 1 + len(batches), stats  # fewer runs than requests: some were joint
    reference = RT.open_runner("onnxruntime", fake / "text.onnx", "fp32", 1)
    tolerance = {"rtol": 1e-2 if "bf16" in config else 1e-6, "atol": 1e-6}
    for feeds, result in zip([batches[0]] + batches, [got] + together):
        np.testing.assert_allclose(result, reference.run(["text_features"], feeds)[0], **tolerance)
    cache = tmp_path / "openvino-cache-repo"
    assert (cache.is_dir() and any(cache.iterdir())) == (runtime == "openvino")


def _served_text(address: str, feeds: dict) -> np.ndarray:
    """text_features of one request to the served sam3_text, on a connection of its own."""
    client = httpclient.InferenceServerClient(address)
    try:
        return client.infer("sam3_text", _text_inputs(feeds)).as_numpy("text_features")
    finally:
        client.close()


def _text_inputs(feeds: dict) -> list:
    inputs = []
    for name, array in feeds.items():
        inputs.append(httpclient.InferInput(name, list(array.shape), "INT64"))
        inputs[-1].set_data_from_numpy(array)
    return inputs


# ---------------------------------------------------------------- CLI


def test_serve_cli_options_and_precision_line(tiny_artifacts, tmp_path, capsys):
    args = parse_args(["serve"])
    assert args.runtime == "openvino" and args.precision == "auto"
    args = parse_args(["serve", "--runtime", "ort", "--precision", "fp32"])
    assert (args.runtime, args.precision) == ("ort", "fp32")
    with pytest.raises(SystemExit):
        parse_args(["serve", "--precision", "fp16"])
    repo = build_repository(tiny_artifacts, tmp_path / "repo", "cpu", precision="fp32")
    _print_precisions(repo)
    assert (
        capsys.readouterr().out
        == "cpu runtime openvino: vision fp32, text fp32, concept fp32, mask fp32, prompt fp32\n"
    )


def test_export_verify_runs_the_bf16_gate_or_says_why_not(fake, tmp_path, capsys):
    """`python -m export verify` ends with the bf16 gate (its step after the ORT parity check)."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(fake, artifacts)
    bf16_gate(artifacts, ("text", "prompt"))
    log = capsys.readouterr().err
    if "BF16" not in cpu_capabilities():
        assert "bf16 gate skipped: this CPU has no bf16" in log and not (artifacts / REPORT_NAME).exists()
        return
    assert set(json.loads((artifacts / REPORT_NAME).read_text())) == {"text", "prompt"}
    assert "bf16 gate text       pass" in log and "bf16 gate prompt     pass" in log


FIRST_RUNS_AT_ONCE = """
import importlib.util, sys, threading
import numpy as np
spec = importlib.util.spec_from_file_location("component_runtime", sys.argv[2])
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
runners = [runtime.OpenVinoRunner(sys.argv[1], "fp32", 1) for _ in range(2)]
start = threading.Barrier(2)
def first_run(runner):
    start.wait()
    runner.run(["y"], {"x": np.ones((2, 16), np.float32)})
threads = [threading.Thread(target=first_run, args=(r,)) for r in runners]
[t.start() for t in threads]
[t.join() for t in threads]
print("both ran")
"""


def test_two_runners_first_runs_at_once_do_not_deadlock(tmp_path):
    """Two threads' first ``infer`` at once hung about one fresh process in four without
    component_runtime.prime_numpy_bridge (9 of 30 with this script). Each try is a fresh process, as a
    served stub is; the script loads the runtime module alone (importing torch first made the hang rarer)."""
    cancelling_graph(tmp_path)
    command = [sys.executable, "-c", FIRST_RUNS_AT_ONCE, str(tmp_path / "cancel.onnx"), str(RUNTIME_MODULE)]
    tries, hung = 16, []
    for attempt in range(tries):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            hung.append(attempt)
            continue
        assert done.stdout.strip() == "both ran", done.stderr[-2000:]
    assert not hung, f"{len(hung)} of {tries} fresh processes hung on their first two runs at once"
