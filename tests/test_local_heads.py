"""Heads in the orchestrator's process (``local_components``, triton_repo/sam3/1/local.py, stages.LocalStages).

The repository writes the in-process copy's settings from the same values as the component model's config;
the pipeline on in-process OpenVINO runners gives the answers it gives on ONNX Runtime; a lone call takes the
wide runner and the calls of a busy batch the one-thread ones; a runner's failure is a StageError. The served
path (a click that never reaches sam3_prompt) is in tests/test_server.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from export.manifest import load_manifest
from export.repository import RepositoryError, build_repository
from sam3_spec import component_specs
from tests.conftest import encode_image
from tests.pbtxt import config_parameters, parse_config_text
from tests.test_orchestrator import make_pipeline, request


@pytest.fixture(scope="module")
def repo(tiny_artifacts, tmp_path_factory):
    return build_repository(tiny_artifacts, tmp_path_factory.mktemp("local") / "cpu", "cpu", precision="fp32")


def parameters(repo, model: str) -> dict:
    return config_parameters(parse_config_text((repo / model / "config.pbtxt").read_text()))


@pytest.fixture(scope="module")
def runners(repo, orchestrator_modules, tiny_artifacts):
    import local  # noqa: PLC0415 (after sys.path setup)

    specs = component_specs(load_manifest(tiny_artifacts).dims)
    parameter = json.loads(parameters(repo, "sam3")["local_components"])
    return local.open_local_runners(parameter, repo / "sam3" / "1", specs, lambda message: None)


def test_the_repository_runs_the_prompt_head_in_process_with_the_component_models_settings(repo):
    local = json.loads(parameters(repo, "sam3")["local_components"])
    prompt = parameters(repo, "sam3_prompt")
    assert list(local) == ["prompt"]
    for key, value in local["prompt"].items():
        if key != "instances":
            assert value == (prompt[key] if isinstance(value, str) else json.loads(prompt[key])), key
    assert local["prompt"]["instances"] == 3  # LOCAL_DEFAULT_NARROW: the prompt head's one-thread runners
    assert instances(repo, "sam3_prompt") == 1  # its model only serves direct clients now
    assert (repo / "sam3" / "1" / local["prompt"]["onnx_file"]).is_file()
    assert (repo / "sam3" / "1" / "component_runtime.py").is_file()


def instances(repo, model: str) -> int:
    return int(parse_config_text((repo / model / "config.pbtxt").read_text())["instance_group"][0]["count"])


@pytest.mark.parametrize(
    "given, model, runners", [({"prompt": 4}, 4, 4), ({"prompt": 2}, 2, 2), ({"sam3_prompt": 1}, 1, 2), ({}, 1, 3)]
)
def test_an_in_process_head_takes_the_instance_count_and_its_model_keeps_one_unless_asked(
    tiny_artifacts, tmp_path, given, model, runners
):
    repo = build_repository(tiny_artifacts, tmp_path / "repo", "cpu", given, precision="fp32")
    assert instances(repo, "sam3_prompt") == model
    assert json.loads(parameters(repo, "sam3")["local_components"])["prompt"]["instances"] == runners
    off = build_repository(tiny_artifacts, tmp_path / "off", "cpu", given, precision="fp32", local_heads=())
    assert instances(off, "sam3_prompt") == (given.get("prompt") or given.get("sam3_prompt") or 2)


def test_local_heads_can_be_turned_off_and_are_checked(tiny_artifacts, tmp_path):
    off = build_repository(tiny_artifacts, tmp_path / "off", "cpu", precision="fp32", local_heads=())
    assert "local_components" not in parameters(off, "sam3")
    with pytest.raises(RepositoryError, match="served components"):
        build_repository(tiny_artifacts, tmp_path / "bad", "cpu", precision="fp32", local_heads=("decoder",))
    with pytest.raises(RepositoryError, match="only the cpu target"):
        build_repository(tiny_artifacts, tmp_path / "gpu", "gpu", local_heads=("prompt",))
    gpu = build_repository(
        tiny_artifacts, tmp_path / "gpu-default", "gpu", models=["sam3", "sam3_vision", "sam3_prompt"]
    )
    assert "local_components" not in parameters(gpu, "sam3")


def test_an_in_process_head_whose_graph_differs_from_the_spec_fails_its_load_naming_each_difference(
    orchestrator_modules, tiny_artifacts, repo
):
    """The graph's names, dtypes and ranks against the spec: every difference in one LocalLoadError."""
    import local  # noqa: PLC0415 (after sys.path setup)

    spec = component_specs(load_manifest(tiny_artifacts).dims)["prompt"]
    first, second, *rest = spec.inputs
    wrong = replace(
        spec,
        inputs=(replace(first, dtype="INT32"), replace(second, shape=(*second.shape, 1)), *rest),
        outputs=spec.outputs[:-1],
    )
    entry = json.loads(parameters(repo, "sam3")["local_components"])["prompt"]
    with pytest.raises(local.LocalLoadError) as failed:
        local._runner("prompt", entry, repo / "sam3" / "1", wrong, 1, lambda message: None)
    message = str(failed.value)
    assert f"input {first.name!r}: graph ('TYPE_FP32'" in message and "vs spec ('TYPE_INT32'" in message
    assert (
        f"input {second.name!r}" in message and f"vs spec ('TYPE_{second.dtype}', {len(second.shape) + 1})" in message
    )
    assert f"outputs: graph {sorted(t.name for t in spec.outputs)}" in message


class Recording:
    """A real runner that records the thread count it was opened with, its calls and the calls in flight."""

    in_flight, most = 0, 0
    lock = threading.Lock()

    def __init__(self, runner, name: str, log: list):
        self.runner, self.name, self.log = runner, name, log

    def run(self, names, feeds, shared=False):
        with Recording.lock:
            Recording.in_flight += 1
            Recording.most = max(Recording.most, Recording.in_flight)
        self.log.append(self.name)
        try:
            return self.runner.run(names, feeds, shared)
        finally:
            with Recording.lock:
                Recording.in_flight -= 1


def local_pipeline(modules, tiny_artifacts, runners, log: list):
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    wide, narrow = runners["prompt"]
    recorded = {"prompt": (Recording(wide, "wide", log), [Recording(r, "narrow", log) for r in narrow])}
    outputs = {"prompt": [name for name, _, _ in wide.outputs()]}
    pipe.stages = modules["stages"].LocalStages(pipe.stages, recorded, outputs)
    return pipe


def click(modules, image, x: float, y: float):
    return request(modules, image, mode=[b"point"], points=[[x, y]], point_labels=[1])


def test_in_process_openvino_heads_answer_as_onnx_runtime_does(modules, tiny_artifacts, runners, coffee_jpeg):
    """Points and boxes on in-process OpenVINO fp32 runners against the same graphs in ONNX Runtime."""
    reference = make_pipeline(modules, tiny_artifacts, modules["post"])
    log: list = []
    pipe = local_pipeline(modules, tiny_artifacts, runners, log)
    box = dict(mode=[b"box"], boxes=[[10.0, 20.0, 300.0, 350.0], [200.0, 50.0, 580.0, 390.0]])
    for req in (click(modules, coffee_jpeg, 100.0, 120.0), request(modules, coffee_jpeg, **box)):
        got, want = pipe.run(req), reference.run(req)
        np.testing.assert_allclose(got.iou_scores, want.iou_scores, atol=1e-4)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1.0)
        agree = (got.masks.dense() == want.masks.dense()).mean()
        assert agree > 0.999, agree  # fp32 in two runtimes: a mask logit at the threshold may flip a pixel
    assert log == ["wide", "wide"] and pipe.stages.calls["sam3_prompt"] == 2
    assert pipe.stages.seconds["sam3_prompt"] > 0


def test_a_busy_batch_takes_the_one_thread_runners_and_equals_serial_answers(
    modules, tiny_artifacts, runners, coffee_jpeg, astronaut_png
):
    """Clicks on four different images in one batch: four prompt calls, each on a narrow runner (three of them:
    at most three run together); each answer equals the same click alone (on the wide runner)."""
    log: list = []
    pipe = local_pipeline(modules, tiny_artifacts, runners, log)
    assert len(runners["prompt"][1]) == 3
    flipped = [
        encode_image(np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(i)))[::-1]))
        for i in (coffee_jpeg, astronaut_png)
    ]
    reqs = [click(modules, image, 100.0, 50.0) for image in (coffee_jpeg, astronaut_png, *flipped)]
    for req in reqs:
        pipe.run(req)  # embedded: the batch below makes prompt calls only
    log.clear()
    Recording.most = 0
    together = [r for r, _ in asyncio.run(pipe.run_batch(reqs))]
    assert sorted(log) == ["narrow"] * 4 and Recording.most <= 3
    log.clear()
    for req, got in zip(reqs, together):
        alone = pipe.run(req)
        np.testing.assert_allclose(got.iou_scores, alone.iou_scores, atol=1e-4)
        assert (got.masks.dense() == alone.masks.dense()).mean() > 0.999
    assert log == ["wide"] * 4


class Broken:
    def run(self, names, feeds, shared=False):
        raise RuntimeError("Exception from src/inference: out of memory")


def test_a_failing_in_process_head_is_that_requests_stage_error(modules, tiny_artifacts, runners, coffee_jpeg):
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    wide, _ = runners["prompt"]
    outputs = {"prompt": [name for name, _, _ in wide.outputs()]}
    pipe.stages = modules["stages"].LocalStages(pipe.stages, {"prompt": (Broken(), [])}, outputs)
    results = [r for r, _ in asyncio.run(pipe.run_batch([click(modules, coffee_jpeg, 100.0, 120.0)]))]
    assert isinstance(results[0], modules["stages"].StageError)
    assert "sam3_prompt (in process) failed: RuntimeError" in str(results[0]) and "out of memory" in str(results[0])
    text = request(modules, coffee_jpeg, mode=[b"text"], text=["cup"], threshold=[0.0])
    assert len(pipe.run(text).scores) > 0  # the components that are not in process still answer


@pytest.fixture(scope="module")
def text_heads(tiny_artifacts, tmp_path_factory, orchestrator_modules):
    """A repository with every head in process (prompt at one instance), and its runners."""
    import local  # noqa: PLC0415 (after sys.path setup)

    heads = ("prompt", "concept", "mask")
    out = tmp_path_factory.mktemp("heads") / "cpu"
    built = build_repository(tiny_artifacts, out, "cpu", {"prompt": 1}, precision="fp32", local_heads=heads)
    parameter = json.loads(parameters(built, "sam3")["local_components"])
    specs = component_specs(load_manifest(tiny_artifacts).dims)
    return parameter, local.open_local_runners(parameter, built / "sam3" / "1", specs, lambda message: None)


def test_every_head_in_process_has_at_least_two_one_thread_runners(text_heads):
    parameter, runners = text_heads
    assert sorted(parameter) == ["concept", "mask", "prompt"]
    assert {c: e["instances"] for c, e in parameter.items()} == {"prompt": 2, "concept": 2, "mask": 2}
    assert all(len(narrow) == 2 for _, narrow in runners.values())


def test_text_requests_on_in_process_heads_answer_as_onnx_runtime_does(
    modules, tiny_artifacts, text_heads, coffee_jpeg
):
    """Text mode with its concept and mask heads in process (two concepts: two calls of each at once, on the
    one-thread runners) against the same graphs in ONNX Runtime."""
    _, runners = text_heads
    reference = make_pipeline(modules, tiny_artifacts, modules["post"])
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    outputs = {c: [name for name, _, _ in wide.outputs()] for c, (wide, _) in runners.items()}
    pipe.stages = modules["stages"].LocalStages(pipe.stages, runners, outputs)
    pipe.chunk_concepts = reference.chunk_concepts = 1  # the cpu target's: one call per concept
    req = request(modules, coffee_jpeg, mode=[b"text"], text=["cup", "saucer"], threshold=[0.0])
    got, want = pipe.run(req), reference.run(req)
    assert len(got.scores) == len(want.scores) > 0
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1.0)
    assert (got.masks.dense() == want.masks.dense()).mean() > 0.999
    assert pipe.stages.calls["sam3_concept"] == 2 and pipe.stages.calls["sam3_mask"] <= 2


def test_in_process_heads_serve_one_event_loop_after_another(modules, tiny_artifacts, runners, coffee_jpeg):
    """``Sam3Pipeline.run`` starts an event loop per call: the runners' queues follow it, also when a call of
    the new loop has to wait for a runner (three objects' calls, chunks of one, one wide runner only)."""
    log: list = []
    pipe = local_pipeline(modules, tiny_artifacts, runners, log)
    wide, _ = pipe.stages.runners["prompt"]
    pipe.stages.runners["prompt"] = (wide, [])
    pipe.chunk_objects = 1
    boxes = dict(mode=[b"box"], boxes=[[10.0, 20.0, 300.0, 350.0], [200.0, 50.0, 580.0, 390.0], [5.0, 5.0, 50.0, 50.0]])
    first, second = (pipe.run(request(modules, coffee_jpeg, **boxes)) for _ in range(2))
    assert len(first.scores) == len(second.scores) == 3 and log == ["wide"] * 6
    np.testing.assert_allclose(first.iou_scores, second.iou_scores, atol=1e-6)


def test_a_click_during_auto_modes_calls_takes_the_idle_wide_runner(modules, tiny_artifacts, runners, coffee_jpeg):
    """Auto mode's calls run at its lower priority on the one-thread runners; a click that arrives meanwhile is
    alone at its priority and takes the wide runner, idle until then, instead of queueing behind them."""
    log: list = []
    pipe = local_pipeline(modules, tiny_artifacts, runners, log)
    auto = request(modules, coffee_jpeg, mode=[b"auto"], points_per_side=[16])
    tap = click(modules, coffee_jpeg, 100.0, 120.0)
    alone = pipe.run(tap)  # also embeds the image
    log.clear()

    async def both():
        busy = asyncio.ensure_future(pipe.run_batch([auto]))
        while "narrow" not in log:  # auto's calls are under way
            await asyncio.sleep(0.001)
        clicked = await pipe.run_batch([tap])
        return clicked, await busy

    (([got, _],), _) = asyncio.run(both())
    assert log.count("wide") == 1 and log.count("narrow") == 16  # 256 grid points, 16 per call
    np.testing.assert_allclose(got.iou_scores, alone.iou_scores, atol=1e-6)


def test_a_request_found_cancelled_stops_its_calls_and_frees_every_runner(
    modules, tiny_artifacts, runners, coffee_jpeg
):
    """run_batch polls each request's ``cancelled``: an auto request found cancelled stops (its head calls not yet
    started never run) and gets RequestCancelled; a click of the same batch gets its answer; the runners of calls
    that were running go back to their queues once those end, so the next batch on the same loop is served."""
    import errors  # noqa: PLC0415 (after sys.path setup)

    log: list = []
    pipe = local_pipeline(modules, tiny_artifacts, runners, log)
    auto = request(modules, coffee_jpeg, mode=[b"auto"], points_per_side=[32])  # 1,024 points: 64 head calls
    polled: list = []

    async def batch_then_click():
        cancelled = [lambda: polled.append("auto") or True, lambda: polled.append("click") or False]
        first = await pipe.run_batch([auto, click(modules, coffee_jpeg, 100.0, 120.0)], cancelled=cancelled)
        calls = len(log)
        after = await asyncio.wait_for(pipe.run_batch([click(modules, coffee_jpeg, 30.0, 40.0)]), 60)
        return first, calls, after

    first, calls, after = asyncio.run(batch_then_click())
    assert isinstance(first[0][0], errors.RequestCancelled) and "auto" in polled, first[0][0]
    assert not isinstance(first[1][0], BaseException) and len(first[1][0].scores) == 1
    assert calls < 1 + 1024 // 16, calls  # the click's call and a few of the auto request's, not all 64
    assert not isinstance(after[0][0], BaseException)
