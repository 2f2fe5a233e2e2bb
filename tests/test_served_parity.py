"""The served pipeline equals transformers' own pipeline on the same weights, image and prompts.

Server side: the real Triton server (fixture ``sam3_server``) through the client library over
gRPC. Reference side: Sam3Model + Sam3Processor and Sam3TrackerModel + Sam3TrackerProcessor
in-process on the tiny checkpoint. Criteria (issue 3): same detection count, boxes within
1e-2 px and scores within 1e-4 (the reference boxes and IoU scores clipped to the image and to [0, 1], as we serve them),
mask IoU ≥ 0.99. Thresholds are placed in a gap of the reference
scores so that several detections are kept and a real difference would change the count.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

BOX_ATOL, SCORE_ATOL, MIN_IOU = 1e-2, 1e-4, 0.99


@pytest.fixture(scope="module")
def processors(tiny_checkpoint):
    from transformers import Sam3Processor, Sam3TrackerProcessor  # noqa: PLC0415 (optional: export extra)

    return Sam3Processor.from_pretrained(tiny_checkpoint), Sam3TrackerProcessor.from_pretrained(tiny_checkpoint)


def pil(image_bytes: bytes) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes)).convert("RGB")


def reference_text(models, processors, image_bytes, text, threshold, boxes=None, box_labels=None):
    """transformers: (scores [D], boxes [D,4] px, masks bool [D,H,W]) for one concept."""
    kwargs = {} if boxes is None else {"input_boxes": [boxes], "input_boxes_labels": [box_labels]}
    inputs = processors[0](images=pil(image_bytes), text=text, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = models[0](**inputs)
    result = processors[0].post_process_instance_segmentation(
        out, threshold=threshold, mask_threshold=0.5, target_sizes=inputs["original_sizes"].tolist()
    )[0]
    h, w = inputs["original_sizes"][0].tolist()
    boxes = np.clip(result["boxes"].numpy(), 0, np.array([w, h, w, h], np.float32))  # we serve boxes clipped
    return result["scores"].numpy(), boxes, result["masks"].numpy().astype(bool)


def reference_prompt(models, processors, image_bytes, points=None, labels=None, boxes=None):
    """transformers tracker: per object (best mask bool [H,W], all 3 IoU scores)."""
    kwargs = {}
    if points is not None:
        kwargs |= {"input_points": [[points]], "input_labels": [[labels]]}
    if boxes is not None:
        kwargs |= {"input_boxes": [boxes]}
    inputs = processors[1](images=pil(image_bytes), return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = models[1](**inputs, multimask_output=True)
    masks = processors[1].post_process_masks(out.pred_masks, inputs["original_sizes"])[0].numpy()
    iou = out.iou_scores[0].numpy()
    best = iou.argmax(-1)
    return masks[np.arange(len(best)), best], np.clip(iou, 0, 1)  # we serve scores in [0, 1]


def all_reference_scores(models, processors, image_bytes, text) -> np.ndarray:
    return reference_text(models, processors, image_bytes, text, threshold=0.0)[0]


def gap_threshold(scores: np.ndarray, keep: int) -> float:
    """A threshold that keeps ≈``keep`` of ``scores`` and sits in the widest nearby gap."""
    s = np.sort(scores)[::-1]
    gaps = [(s[i] - s[i + 1], i) for i in range(max(1, keep - 2), min(len(s) - 1, keep + 3))]
    width, i = max(gaps)
    assert width > 1e-3, f"no score gap near {keep} detections: {s[: keep + 3]}"
    return float((s[i] + s[i + 1]) / 2)


def shared_threshold(score_sets: list[np.ndarray], keep_each: int = 2) -> float:
    """The highest threshold (mid-gap, gap > 1e-3) that keeps ≥ keep_each scores of every set."""
    pooled = np.sort(np.concatenate(score_sets))[::-1]
    for hi, lo in zip(pooled[:-1], pooled[1:]):
        t = (hi + lo) / 2
        if hi - lo > 1e-3 and all((s > t).sum() >= keep_each for s in score_sets):
            return float(t)
    raise AssertionError("no threshold keeps enough detections of every concept")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def assert_same_detections(seg, scores, boxes, masks, label_rows=None):
    rows = np.arange(len(seg)) if label_rows is None else label_rows
    assert len(rows) == len(scores) and len(scores) >= 2, (len(rows), len(scores))
    np.testing.assert_allclose(seg.scores[rows], scores, atol=SCORE_ATOL, rtol=0)
    np.testing.assert_allclose(seg.boxes[rows], boxes, atol=BOX_ATOL, rtol=0)
    ious = [mask_iou(seg.masks[r], m) for r, m in zip(rows, masks)]
    assert min(ious) >= MIN_IOU, ious


@pytest.mark.parametrize("image_name", ["astronaut_png", "coffee_jpeg"])
def test_text_mode_matches_sam3model(client, tiny_models, processors, image_name, request):
    image = request.getfixturevalue(image_name)
    threshold = gap_threshold(all_reference_scores(tiny_models, processors, image, "person"), keep=5)
    ref = reference_text(tiny_models, processors, image, "person", threshold)
    seg = client.text(image, "person", threshold=threshold)
    assert_same_detections(seg, *ref)


def test_two_concepts_in_one_request_match_two_reference_runs(client, tiny_models, processors, astronaut_png):
    concepts = ["person", "a red cup"]
    threshold = shared_threshold([all_reference_scores(tiny_models, processors, astronaut_png, c) for c in concepts])
    seg = client.text(astronaut_png, concepts, threshold=threshold)
    for index, concept in enumerate(concepts):
        rows = np.flatnonzero(seg.labels == index)
        assert_same_detections(seg, *reference_text(tiny_models, processors, astronaut_png, concept, threshold), rows)


def test_exemplar_box_matches_sam3model(client, tiny_models, processors, coffee_jpeg):
    box, label = [[120.0, 80.0, 420.0, 330.0]], [1]
    scores = reference_text(tiny_models, processors, coffee_jpeg, "cup", 0.0, box, label)[0]
    threshold = gap_threshold(scores, keep=5)
    ref = reference_text(tiny_models, processors, coffee_jpeg, "cup", threshold, box, label)
    seg = client.text(coffee_jpeg, "cup", exemplar_boxes=box, exemplar_labels=label, threshold=threshold)
    assert_same_detections(seg, *ref)


def test_point_mode_matches_sam3tracker(client, tiny_models, processors, coffee_jpeg):
    points, labels = [[250.0, 180.0], [400.0, 300.0]], [1, 0]
    masks, iou = reference_prompt(tiny_models, processors, coffee_jpeg, points=points, labels=labels)
    seg = client.points(coffee_jpeg, points, labels)
    assert len(seg) == 1
    np.testing.assert_allclose(seg.iou_scores, iou, atol=SCORE_ATOL, rtol=0)
    assert mask_iou(seg.masks[0], masks[0]) >= MIN_IOU


def test_box_mode_with_two_boxes_matches_sam3tracker(client, tiny_models, processors, astronaut_png):
    boxes = [[100.0, 30.0, 380.0, 500.0], [10.0, 300.0, 200.0, 500.0]]
    masks, iou = reference_prompt(tiny_models, processors, astronaut_png, boxes=boxes)
    seg = client.boxes(astronaut_png, boxes)
    assert len(seg) == 2
    np.testing.assert_allclose(seg.iou_scores, iou, atol=SCORE_ATOL, rtol=0)
    assert min(mask_iou(seg.masks[i], masks[i]) for i in range(2)) >= MIN_IOU
