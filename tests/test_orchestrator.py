"""The orchestrator's logic without Triton: request parsing, caches, and the GPU post-processing.

The pipeline runs here on OrtStages (the exported graphs in real ONNX Runtime sessions). The
GPU path (postprocess_torch, tensors handed over by DLPack) is checked on CPU torch tensors
against the numpy path: same detections, same masks.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from export.manifest import load_manifest
from server.gpu_check.torch_pipeline import DeviceOutputs


def make_pipeline(modules, artifacts, post, torch_outputs=False):
    manifest = load_manifest(artifacts)
    stages = modules["stages"].OrtStages({n: artifacts / s.onnx_file for n, s in manifest.specs().items()})
    tokenizer = modules["text_tokens"].TextTokenizer.from_file(artifacts / "tokenizer.json")
    lru = modules["cache"].ByteLRU
    return modules["pipeline"].Sam3Pipeline(
        DeviceOutputs(stages, "cpu") if torch_outputs else stages,
        tokenizer,
        manifest.dims,
        lru(2**28),
        lru(2**24),
        post=post,
    )


def request(modules, image, **fields):
    tensors = {"image": np.array([image], dtype=object)}
    for name, value in fields.items():
        tensors[name] = np.array(
            [v.encode() for v in value] if name == "text" else value, dtype=object if name in ("text", "mode") else None
        )
    return modules["request"].parse_request(tensors)


@pytest.mark.parametrize(
    "fields",
    [
        {"mode": [b"text"], "text": ["person", "cup"], "threshold": [0.2]},
        {"mode": [b"point"], "points": [[120.0, 200.0], [300.0, 100.0]], "point_labels": [1, 0]},
        {"mode": [b"box"], "boxes": [[50.0, 40.0, 300.0, 350.0], [10.0, 10.0, 100.0, 200.0]]},
    ],
)
def test_gpu_postprocessing_equals_the_numpy_path(modules, tiny_artifacts, coffee_jpeg, fields):
    cpu = make_pipeline(modules, tiny_artifacts, modules["post"])
    gpu = make_pipeline(modules, tiny_artifacts, modules["post_torch"], torch_outputs=True)
    a, b = cpu.run(request(modules, coffee_jpeg, **fields)), gpu.run(request(modules, coffee_jpeg, **fields))
    assert len(a.scores) == len(b.scores) >= 1
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    masks_a, masks_b = a.masks.dense(), b.masks.dense()
    differing = (masks_a != masks_b).mean()
    assert masks_a.shape == masks_b.shape and differing < 1e-4, differing


def test_text_features_are_reused_from_the_cache(modules, tiny_artifacts, astronaut_png):
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    first = pipe.run(request(modules, astronaut_png, mode=[b"text"], text=["person"], threshold=[0.2]))
    hits = pipe.text_cache.hits, pipe.image_cache.hits
    again = pipe.run(request(modules, astronaut_png, mode=[b"text"], text=["person"], threshold=[0.2]))
    assert (pipe.text_cache.hits, pipe.image_cache.hits) == (hits[0] + 1, hits[1] + 1)
    np.testing.assert_array_equal(first.scores, again.scores)


def test_byte_lru_evicts_least_recent_and_counts(modules):
    lru = modules["cache"].ByteLRU(3000)
    for key in "abc":
        lru.put(key, np.zeros(1000, np.uint8))
    assert lru.get("a") is not None  # a becomes most recent
    lru.put("d", np.zeros(1000, np.uint8))  # evicts b
    assert lru.get("b") is None and lru.get("c") is not None and len(lru) == 3 and lru.used == 3000
    lru.put("huge", np.zeros(5000, np.uint8))
    assert lru.get("huge") is None and (lru.hits, lru.misses) == (2, 2)


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({}, "image is required"),
        ({"mode": [b"paint"]}, "unknown mode"),
        ({"mode": [b"point"]}, "point mode needs"),
        ({"mode": [b"box"]}, "box mode needs"),
        ({"mode": [b"text"], "threshold": [1.5]}, "threshold"),
        ({"mode": [b"text"], "text": [b"a"] * 17}, "too many text concepts"),
        ({"mask_format": [b"svg"], "text": [b"a"]}, "mask_format"),
        ({"mode": [b"\xff"]}, "UTF-8"),
    ],
)
def test_request_validation_messages(modules, tensors, message):
    arrays = {k: np.array(v, dtype=object) if isinstance(v[0], bytes) else np.array(v) for k, v in tensors.items()}
    if tensors:
        arrays["image"] = np.array([b"bytes"], dtype=object)
    with pytest.raises(modules["request"].InputError, match=message):
        modules["request"].parse_request(arrays)


class CountingStages:
    """OrtStages that count their calls per component (the real sessions do the work)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, {}

    def run(self, component, feeds, outputs=None):
        self.calls[component] = self.calls.get(component, 0) + 1
        return self.inner.run(component, feeds, outputs)

    async def arun(self, component, feeds, outputs=None):
        return self.run(component, feeds, outputs)

    def in_process(self, component):
        return True


def test_point_and_box_requests_on_one_image_share_prompt_calls(modules, tiny_artifacts, coffee_jpeg):
    """Same image + same points per object → one sam3_prompt call (objects stacked, chunks of 2 here);
    every request still gets exactly its own serial result."""
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    counting = CountingStages(pipe.stages)
    pipe.stages, pipe.chunk_objects = counting, 2
    reqs = [
        request(modules, coffee_jpeg, mode=[b"point"], points=[[100.0, 120.0]], point_labels=[1]),
        request(modules, coffee_jpeg, mode=[b"point"], points=[[300.0, 200.0]], point_labels=[1]),
        request(modules, coffee_jpeg, mode=[b"point"], points=[[50.0, 60.0], [400.0, 300.0]], point_labels=[1, 0]),
        request(modules, coffee_jpeg, mode=[b"box"], boxes=[[10.0, 20.0, 300.0, 350.0], [200.0, 50.0, 580.0, 390.0]]),
        request(modules, coffee_jpeg, mode=[b"point"], points=[[9000.0, 1.0]], point_labels=[1]),
    ]  # outside
    together = [r for r, _ in asyncio.run(pipe.run_batch(reqs))]
    assert counting.calls["prompt"] == 1 + 2  # K=1: one call (2 objects); K=2: 3 objects in chunks of 2
    assert isinstance(together[4], modules["request"].InputError) and "outside the image" in str(together[4])
    for req, got in zip(reqs[:4], together[:4]):
        alone = pipe.run(req)
        np.testing.assert_array_equal(got.masks.dense(), alone.masks.dense())
        np.testing.assert_allclose(got.iou_scores, alone.iou_scores, atol=1e-6)
    assert len(together[3].scores) == 2 and len(together[2].scores) == 1


class HoldFirstPromptCall(CountingStages):
    """OrtStages whose first sam3_prompt call waits (at most ``hold_s``) until a request of the batch is answered."""

    def __init__(self, inner, hold_s: float = 10.0):
        super().__init__(inner)
        self.answered, self.hold_s, self.saw_an_answer = asyncio.Event(), hold_s, None

    async def arun(self, component, feeds, outputs=None):
        if component == "prompt" and self.saw_an_answer is None:
            self.saw_an_answer = False
            try:
                await asyncio.wait_for(self.answered.wait(), self.hold_s)
                self.saw_an_answer = True
            except TimeoutError:
                pass
        return self.run(component, feeds, outputs)


def test_a_click_is_answered_without_waiting_for_another_images_head_call(
    modules, tiny_artifacts, coffee_jpeg, astronaut_png
):
    """Clicks on two images are two prompt-head calls; the click whose call ends first is post-processed and
    answered while the other call still runs (it used to wait for every call of its batch), and both equal
    their serial results."""
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    held = HoldFirstPromptCall(pipe.stages)
    pipe.stages = held
    reqs = [
        request(modules, coffee_jpeg, mode=[b"point"], points=[[100.0, 120.0]], point_labels=[1]),
        request(modules, astronaut_png, mode=[b"point"], points=[[250.0, 200.0]], point_labels=[1]),
    ]

    async def answered(index, result, timings):
        held.answered.set()

    together = [r for r, _ in asyncio.run(pipe.run_batch(reqs, on_result=answered))]
    assert held.calls["prompt"] == 2
    assert held.saw_an_answer is True
    for req, got in zip(reqs, together):
        np.testing.assert_array_equal(got.masks.dense(), pipe.run(req).masks.dense())


@pytest.mark.parametrize("max_rows, concept_calls, gpu", [(8, 2, False), (2, 4, False), (8, 2, True)])
def test_text_requests_on_one_image_share_concept_and_mask_calls(
    modules, tiny_artifacts, coffee_jpeg, astronaut_png, max_rows, concept_calls, gpu
):
    """Text requests of one batch on the same image (and the same exemplar-box count) → one sam3_concept
    call and one sam3_mask call, prompts stacked (at most max_rows per call); every request still gets
    exactly its own serial result, its own threshold applied. ``gpu``: torch tensors between the
    stages and GPU post-processing, as on the gpu target (where the orchestrator merges)."""
    pipe = make_pipeline(modules, tiny_artifacts, modules["post_torch" if gpu else "post"], torch_outputs=gpu)
    counting = CountingStages(pipe.stages.stages)
    pipe.stages.stages, pipe.stages.max_rows = counting, max_rows
    text = dict(mode=[b"text"])
    reqs = [
        request(modules, coffee_jpeg, **text, text=["cup"], threshold=[0.0]),
        request(modules, coffee_jpeg, **text, text=["saucer", "table"], threshold=[0.3]),
        request(modules, coffee_jpeg, **text, text=["cup"], boxes=[[10.0, 20.0, 300.0, 350.0]], box_labels=[1]),
        request(modules, astronaut_png, **text, text=["person"], threshold=[0.0]),
        request(modules, coffee_jpeg, mode=[b"point"], points=[[100.0, 120.0]], point_labels=[1]),
        request(modules, coffee_jpeg, **text, text=["cup"], threshold=[0.0], mask_threshold=[0.8]),
    ]
    together = [r for r, _ in asyncio.run(pipe.run_batch(reqs))]
    # coffee: 1 + 2 + 1 + 1 prompts of one box slot each (max_rows 2: packs 1 | 2 | 1+1); astronaut: 1
    assert counting.calls["concept"] == concept_calls
    assert counting.calls["mask"] <= concept_calls and counting.calls["prompt"] == 1
    for req, got in zip(reqs, together):
        alone = pipe.run(req)
        assert len(got.scores) == len(alone.scores)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-6)
        np.testing.assert_allclose(got.boxes, alone.boxes, atol=1e-4)
        np.testing.assert_array_equal(got.masks.dense(), alone.masks.dense())
    same_concept = together[0], together[5]  # each with its own mask threshold
    assert len(same_concept[0].scores) == len(same_concept[1].scores) >= 1
    assert same_concept[1].masks.dense().sum() < same_concept[0].masks.dense().sum()


class FailingPrompt(CountingStages):
    """OrtStages whose sam3_prompt calls raise from the ``fail_at``-th on (a component that died mid-request)."""

    def __init__(self, inner, fail_at: int):
        super().__init__(inner)
        self.fail_at = fail_at

    def run(self, component, feeds, outputs=None):
        out = super().run(component, feeds, outputs)
        if component == "prompt" and self.calls["prompt"] >= self.fail_at:
            raise modules_stage_error("sam3_prompt failed: stub died")
        return out


def modules_stage_error(message):
    import stages  # noqa: PLC0415 (after sys.path setup)

    return stages.StageError(message)


def test_auto_mode_overlaps_its_prompt_calls_and_fails_cleanly(modules, tiny_artifacts, coffee_jpeg):
    """A 64-point grid goes out as 4 prompt calls of 16 (each one's candidates collected while the next
    runs); the same request with its calls failing from the 2nd on gets that error as its result."""
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    auto = dict(mode=[b"auto"], points_per_side=[8], pred_iou_thresh=[0.0], stability_score_thresh=[0.0])
    counting = CountingStages(pipe.stages)
    pipe.stages = counting
    result = pipe.run(request(modules, coffee_jpeg, **auto))
    assert counting.calls["prompt"] == 4 and len(result.scores) >= 1
    pipe.stages = FailingPrompt(counting.inner, fail_at=2)
    got, _ = asyncio.run(pipe.run_batch([request(modules, coffee_jpeg, **auto)]))[0]
    assert isinstance(got, modules["stages"].StageError) and "stub died" in str(got)


def test_an_image_is_hashed_once_per_request(modules, tiny_artifacts, coffee_jpeg, astronaut_png, monkeypatch):
    """Without an image_id the cache key is a hash of the image bytes: one per request, however many steps of
    the batch ask for it (it was one per step and per other request: milliseconds each for a camera JPEG)."""
    hashed = []
    real = modules["request"].content_key
    monkeypatch.setattr(modules["request"], "content_key", lambda data: hashed.append(len(data)) or real(data))
    pipe = make_pipeline(modules, tiny_artifacts, modules["post"])
    reqs = [
        request(modules, coffee_jpeg, mode=[b"point"], points=[[100.0, 120.0]], point_labels=[1]),
        request(modules, astronaut_png, mode=[b"box"], boxes=[[10.0, 20.0, 300.0, 350.0]]),
        request(modules, coffee_jpeg, mode=[b"text"], text=["cup"], threshold=[0.0]),
    ]
    results = [r for r, _ in asyncio.run(pipe.run_batch(reqs))]
    assert not [r for r in results if isinstance(r, BaseException)]
    assert sorted(hashed) == sorted(len(image) for image in (coffee_jpeg, astronaut_png, coffee_jpeg))
    assert reqs[0].cache_key == reqs[2].cache_key != reqs[1].cache_key
