"""Image features by reference (cpu target): the orchestrator's arena slots shared with the component models.

The arena's memory is a memfd another process maps by its /proc path (arena.py, shared_features.py); the
served vision model writes an image's outputs into a slot it is given, the served heads read their image
features from one; a bad ref is that request's own error. Real processes and a real tritonserver on the
fake graphs of tests/test_repository.py (ONNX Runtime: the stub's by-reference code is the same for both
runtimes); the whole pipeline by reference is checked against transformers by tests/test_served_parity.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from test_repository import TINY, make_fake_artifacts
from tritonclient.utils import InferenceServerException

from client.api import Sam3Client
from export.inputs import example_inputs
from export.manifest import load_manifest
from export.pbtxt import to_pbtxt
from export.repository import build_repository, component_config
from sam3_spec import ARENA_FILE, ARENA_HEADER, NP_DTYPES, component_specs
from server.triton import TritonServer
from tests.conftest import tiny_repository
from tests.pbtxt import config_parameters, parse_config_text

pytestmark = pytest.mark.timeout(300)
COMPONENT_DIR = Path(__file__).resolve().parents[1] / "triton_repo" / "ort_component" / "1"
SPECS = component_specs(TINY)
TRITON_TYPES = {"uint8": "UINT8", "float32": "FP32", "int64": "INT64", "object": "BYTES"}


def _shared_features():
    """triton_repo/ort_component/1/shared_features.py (its folder also holds a model.py, so not on sys.path)."""
    spec = importlib.util.spec_from_file_location("shared_features", COMPONENT_DIR / "shared_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arena_module(orchestrator_modules):
    import arena  # noqa: PLC0415 (after sys.path setup)

    return arena


@pytest.fixture(scope="module")
def layout(arena_module) -> dict:
    return arena_module.image_layout(SPECS["vision"], NP_DTYPES)


def _arena(arena_module, layout, count: int):
    slots = arena_module.SlotArena(arena_module.slot_bytes(layout), count, log=lambda line: None)
    slots.warm()
    return slots


CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from shared_features import ArenaMaps
ref, shape = json.loads(sys.argv[2]), tuple(json.loads(sys.argv[3]))
view = ArenaMaps(sys.argv[4], int(sys.argv[5]), log=print).views(ref, {"fpn_2": (shape, np.float32)})["fpn_2"]
print(float(view.sum()))
view[...] = 7.0
"""


def test_a_reserved_slot_is_read_and_written_by_another_process(arena_module, layout):
    """The child maps the slot by the ref's /proc path alone: it reads what the orchestrator wrote, and its
    write lands in the orchestrator's arrays. A slot stays taken while its arrays are held."""
    slots = _arena(arena_module, layout, 2)
    first = slots.reserve(layout)
    first.arrays["fpn_2"][...] = 0.5
    shape = layout["fpn_2"][0]
    child = [
        sys.executable,
        "-c",
        CHILD,
        str(COMPONENT_DIR),
        first.ref,
        json.dumps(shape),
        ARENA_FILE,
        str(ARENA_HEADER),
    ]
    out = subprocess.run(child, capture_output=True, text=True, timeout=60, check=True).stdout
    assert float(out) == pytest.approx(0.5 * np.prod(shape))
    assert np.all(first.arrays["fpn_2"] == 7.0)
    second = slots.reserve(layout)
    assert json.loads(second.ref)["offsets"] != json.loads(first.ref)["offsets"]
    assert slots.reserve(layout) is None  # both slots held
    del first
    assert slots.reserve(layout) is not None


def test_bad_refs_say_what_is_wrong(arena_module, layout, tmp_path):
    """Not JSON, no such file, a file that is not an arena (a client cannot point a model at any other file),
    a ref without the arena's token (nor forge one for the arena), an offset in the header: each refused."""
    shared = _shared_features()
    with pytest.raises(shared.FeatureRefError, match="is not a ref"):
        shared.parse_refs(np.array([b"not json"], dtype=object))
    maps = shared.ArenaMaps(ARENA_FILE, ARENA_HEADER)
    with pytest.raises(shared.FeatureRefError, match="cannot map the image arena /nonexistent"):
        maps.views({"path": "/nonexistent", "offsets": {}}, {})
    other = tmp_path / "not-an-arena"
    other.write_bytes(bytes(8192))
    with open(other, "rb") as handle:
        with pytest.raises(shared.FeatureRefError, match="is not an image arena"):
            maps.views({"path": f"/proc/self/fd/{handle.fileno()}", "offsets": {}}, {})
    ref = json.loads(_arena(arena_module, layout, 1).reserve(layout).ref)
    shape = {"fpn_2": layout["fpn_2"]}
    assert maps.views(ref, shape)["fpn_2"].shape == layout["fpn_2"][0]
    with pytest.raises(shared.FeatureRefError, match="the token does not match"):
        maps.views(ref | {"token": "0" * 32}, shape)
    with pytest.raises(shared.FeatureRefError, match="lies outside the arena's slots"):
        maps.views(ref | {"offsets": {"fpn_2": 0}}, shape)
    other_arena = json.loads(_arena(arena_module, layout, 1).reserve(layout).ref)
    with pytest.raises(shared.FeatureRefError, match="the token does not match"):  # and the mapping stays
        maps.views(other_arena | {"token": ref["token"]}, shape)
    assert maps.path == ref["path"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real tritonserver with sam3_vision (its batcher waiting up to 2 s, so concurrent requests run jointly)
    and sam3_prompt, on the fake graphs, ONNX Runtime."""
    tmp = tmp_path_factory.mktemp("by-reference")
    fake = make_fake_artifacts(tmp / "fake")
    repo = build_repository(fake, tmp / "repo", "cpu", runtime="onnxruntime", models=["vision", "prompt"])
    config = repo / "sam3_vision" / "config.pbtxt"
    config.write_text(
        config.read_text().replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 2000000")
    )
    with TritonServer(repo, ready_timeout_s=120) as server:
        yield server


def _infer(address: str, model: str, feeds: dict, outputs: list[str]) -> dict:
    client = httpclient.InferenceServerClient(address)
    try:
        inputs = []
        for name, array in feeds.items():
            inputs.append(httpclient.InferInput(name, list(array.shape), TRITON_TYPES[array.dtype.name]))
            inputs[-1].set_data_from_numpy(array, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(n) for n in outputs]
        result = client.infer(model, inputs, outputs=wanted)
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        client.close()


def _refs(slots: list) -> np.ndarray:
    return np.array([[s.ref] for s in slots], dtype=object)


def test_served_vision_writes_each_image_into_its_slot_alone_or_batched(served, arena_module, layout):
    vision = SPECS["vision"]
    names = [t.name for t in vision.outputs]
    pixels = [example_inputs(vision, {"batch": 2}, TINY.image_size, seed=s)["pixel_values"] for s in range(3)]
    expected = [_infer(served.http_address, "sam3_vision", {"pixel_values": p}, names) for p in pixels]
    slots = _arena(arena_module, layout, 6)
    reserved = [[slots.reserve(layout), slots.reserve(layout)] for _ in pixels]

    def by_reference(i):
        feeds = {"pixel_values": pixels[i], "features_ref": _refs(reserved[i])}
        return _infer(served.http_address, "sam3_vision", feeds, ["features_written"])["features_written"]

    before = _executions(served.http_address)
    with ThreadPoolExecutor(len(pixels)) as pool:  # the batcher joins them: one run, split back by request
        written = list(pool.map(by_reference, range(len(pixels))))
    assert _executions(served.http_address) - before < len(pixels)  # some requests ran jointly
    for i, want in enumerate(expected):
        assert written[i].tolist() == [[1], [1]]
        for image, slot in enumerate(reserved[i]):
            for name in names:
                np.testing.assert_allclose(slot.arrays[name][0], want[name][image], rtol=1e-6, atol=1e-6)


def _executions(address: str) -> int:
    client = httpclient.InferenceServerClient(address)
    try:
        return int(client.get_inference_statistics("sam3_vision")["model_stats"][0]["execution_count"])
    finally:
        client.close()


def test_served_prompt_head_reads_its_features_from_the_slot(served, arena_module, layout):
    prompt = SPECS["prompt"]
    feeds = example_inputs(prompt, {"objects": 2, "points": 1}, TINY.image_size, seed=3)
    slots = _arena(arena_module, layout, 1)
    slot = slots.reserve(layout)
    tracker = ("track_0", "track_1", "track_2")
    for name in tracker:
        np.copyto(slot.arrays[name], feeds[name])
    outputs = [t.name for t in prompt.outputs]
    by_value = _infer(served.http_address, "sam3_prompt", feeds, outputs)
    others = {k: v for k, v in feeds.items() if k not in tracker}
    by_ref = _infer(served.http_address, "sam3_prompt", others | {"features_ref": _refs([slot])[0]}, outputs)
    for name in outputs:
        np.testing.assert_array_equal(by_ref[name], by_value[name])


def test_a_bad_ref_fails_its_request_only(served, arena_module, layout):
    prompt = SPECS["prompt"]
    feeds = example_inputs(prompt, {"objects": 1, "points": 1}, TINY.image_size, seed=4)
    others = {k: v for k, v in feeds.items() if not k.startswith("track_")}
    outputs = [t.name for t in prompt.outputs]
    for ref, message in (
        ({"path": "/nonexistent", "offsets": {}}, "cannot map the image arena"),
        ({"path": "/proc/self/fd/0"}, "is not a ref"),
    ):
        bad = np.array([json.dumps(ref)], dtype=object)
        with pytest.raises(InferenceServerException, match=message):
            _infer(served.http_address, "sam3_prompt", others | {"features_ref": bad}, outputs)
    slot = _arena(arena_module, layout, 1).reserve(layout)
    forged = np.array([json.dumps(json.loads(slot.ref) | {"token": "forged"})], dtype=object)
    with pytest.raises(InferenceServerException, match="the token does not match"):
        _infer(served.http_address, "sam3_prompt", others | {"features_ref": forged}, outputs)
    lacking = json.loads(slot.ref)
    del lacking["offsets"]["track_1"]
    with pytest.raises(InferenceServerException, match="features_ref has no offset for 'track_1'"):
        bad = np.array([json.dumps(lacking)], dtype=object)
        _infer(served.http_address, "sam3_prompt", others | {"features_ref": bad}, outputs)
    with pytest.raises(InferenceServerException, match="input 'track_0' is missing"):
        _infer(served.http_address, "sam3_prompt", others, outputs)
    assert _infer(served.http_address, "sam3_prompt", feeds, outputs)["iou_scores"].shape == (1, 3)


@pytest.fixture(scope="module")
def old_prompt_server(tiny_artifacts, tmp_path_factory):
    """The tiny model served with a sam3_prompt configured as before features by reference (no features_ref
    input, no by_reference parameter), like a repository built by an older version, beside new models; the
    orchestrator calls it (no in-process heads)."""
    repo = tiny_repository(tiny_artifacts, tmp_path_factory.mktemp("old-prompt") / "cpu", local_heads=())
    config_file = repo / "sam3_prompt" / "config.pbtxt"
    old = parse_config_text(config_file.read_text())
    params = {k: v for k, v in config_parameters(old).items() if k != "by_reference"}
    spec = component_specs(load_manifest(tiny_artifacts).dims)["prompt"]
    config_file.write_text(to_pbtxt(component_config(spec, "python", old["instance_group"][0]["count"], params)))
    with TritonServer(repo, ready_timeout_s=180) as server:
        yield server


def test_the_orchestrator_falls_back_to_tensors_where_a_head_cannot_take_refs(old_prompt_server, client, astronaut_png):
    """Text (vision, concept and mask heads by reference), then a click on the cached image (the old prompt head
    refuses the ref: the orchestrator resends the features as tensors and stops using refs), then text again
    (tensors): every answer equals the session server's (features by reference throughout)."""
    with Sam3Client(old_prompt_server.grpc_url, protocol="grpc") as old:
        calls = [
            lambda c: c.text(astronaut_png, "person", threshold=0.0, image_id="fallback"),
            lambda c: c.points(None, [[200, 200]], [1], image_id="fallback"),
            lambda c: c.boxes(None, [[10, 20, 300, 400]], image_id="fallback"),
            lambda c: c.text(None, ["person", "helmet"], threshold=0.0, image_id="fallback"),
        ]
        for call in calls:
            got, want = call(old), call(client)
            assert len(got) == len(want) > 0
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
            np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
            assert np.array_equal(got.masks, want.masks)
    assert "image features go to the heads as tensors from now on" in old_prompt_server.log_tail(400)
