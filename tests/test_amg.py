"""Automatic mask generation logic vs transformers' mask-generation functions and torchvision NMS."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "triton_repo" / "sam3" / "1"))

from amg import (  # noqa: E402
    AmgConfig,
    AutomaticMaskGenerator,
    batch_slices,
    box_nms,
    merge_candidates,
    point_grid,
    remove_small_regions,
    stability_score,
)
from postprocess import box_of_columns, masks_to_boxes_xyxy  # noqa: E402
from preprocess import scale_points  # noqa: E402

torch = pytest.importorskip("torch")
SIZE, MASK = 256, 64  # model input side and low-res mask side of the synthetic prompt head


def disk_prompt_head(points: np.ndarray, labels: np.ndarray):
    """Synthetic prompt-head outputs: per point 3 disks (radius r, logit slope s) centred on it.

    points [P, 1, 2] px in the SIZE frame → pred_masks [P, 3, MASK, MASK] logits, iou [P, 3]
    (deterministic, distinct values in [0.8, 1)). Steep disks are stable, the shallow one is not.
    """
    assert points.dtype == np.float32 and labels.dtype == np.int64 and (labels == 1).all()
    centers = points[:, 0] * (MASK / SIZE)
    grid = np.arange(MASK, dtype=np.float32) + 0.5
    dist = np.hypot(grid[None, None, :] - centers[:, 0, None, None], grid[None, :, None] - centers[:, 1, None, None])
    radii, slopes = np.array([4.0, 30.0, 20.0], np.float32), np.array([30.0, 20.0, 0.2], np.float32)
    logits = slopes[None, :, None, None] * (radii[None, :, None, None] - dist[:, None])
    key = (points[:, 0, 0] * 7.31 + points[:, 0, 1] * 3.17)[:, None] + np.arange(3)[None, :] * 0.37
    iou = 0.8 + 0.2 * np.modf(np.abs(np.sin(key)) * 97.0)[0]
    return logits.astype(np.float32), iou.astype(np.float32)


def test_point_grid_matches_transformers():
    from transformers.models.sam3.image_processing_sam3 import _build_point_grid  # noqa: PLC0415 (optional: export extra)

    for n in (1, 2, 5, 16, 32):
        np.testing.assert_array_equal(point_grid(n), _build_point_grid(n).numpy())


def test_batch_slices():
    assert batch_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert batch_slices(0, 4) == []


def test_stability_score_matches_transformers():
    from transformers.models.sam3.image_processing_sam3 import _compute_stability_score  # noqa: PLC0415 (optional: export extra)

    logits = (np.random.default_rng(0).standard_normal((6, 40, 50)) * 3).astype(np.float32)
    logits[5] = -10  # both masks empty → NaN in both
    ref = _compute_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    out = stability_score(logits, 0.0, 1.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    assert np.isnan(out[5])


def test_box_nms_matches_torchvision():
    from torchvision.ops import batched_nms  # noqa: PLC0415 (optional: export extra)

    rng = np.random.default_rng(1)
    xy = rng.random((300, 2)).astype(np.float32) * 100
    boxes = np.concatenate([xy, xy + rng.random((300, 2)).astype(np.float32) * 40 + 1], axis=1)
    boxes[:3] = [[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]]  # zero-area boxes never suppress
    scores = rng.random(300).astype(np.float32)
    for thresh in (0.3, 0.7):
        ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(300), thresh).numpy()
        np.testing.assert_array_equal(box_nms(boxes, scores, thresh), ref)
    assert box_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.7).shape == (0,)


def _transformers_amg(orig_hw):
    """transformers' pipeline steps (post_process_masks → filter_masks → NMS) on the synthetic head."""
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor, _post_process_for_mask_generation  # noqa: PLC0415 (optional: export extra)

    proc, (h, w) = Sam3ImageProcessor(), orig_hw
    points = scale_points(point_grid(8) * np.array([w, h], np.float32), orig_hw, SIZE)
    rles, scores, boxes = [], [], []
    for sl in batch_slices(len(points), 16):
        pred, iou = disk_prompt_head(points[sl][:, None], np.ones((sl.stop - sl.start, 1), np.int64))
        up = proc.post_process_masks([torch.from_numpy(pred)], [list(orig_hw)], binarize=False)[0]
        r, s, b = proc.filter_masks(up, torch.from_numpy(iou), orig_hw, torch.tensor([0, 0, w, h]))
        rles, scores, boxes = rles + r, scores + [s], boxes + [b]
    masks, iou, _, boxes = _post_process_for_mask_generation(rles, torch.cat(scores), torch.cat(boxes), 0.7)
    return [m.numpy() for m in masks], iou.numpy(), boxes.numpy()


def test_generate_matches_transformers_pipeline_steps():
    orig_hw = (150, 210)
    calls = []

    def head(points, labels):
        calls.append(points.shape)
        return disk_prompt_head(points, labels)

    records = AutomaticMaskGenerator(AmgConfig(points_per_side=8, points_per_batch=16)).generate(head, orig_hw, SIZE)
    ref_masks, ref_iou, ref_boxes = _transformers_amg(orig_hw)
    assert calls == [(16, 1, 2)] * 4
    assert 3 <= len(records) == len(ref_masks)
    for rec, mask, iou, box in zip(records, ref_masks, ref_iou, ref_boxes):
        assert rec["segmentation"].shape == orig_hw and rec["segmentation"].dtype == bool
        assert (rec["segmentation"] != mask).mean() < 1e-4
        assert rec["predicted_iou"] == pytest.approx(float(iou), abs=1e-7) and rec["score"] == rec["predicted_iou"]
        np.testing.assert_array_equal(rec["box_xyxy"], box)
        assert rec["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        assert rec["area"] == int(rec["segmentation"].sum()) and rec["stability_score"] > 0.95
    assert [r["predicted_iou"] for r in records] == sorted((r["predicted_iou"] for r in records), reverse=True)
    no_nms = AmgConfig(points_per_side=8, points_per_batch=16, box_nms_thresh=1.0)
    assert len(AutomaticMaskGenerator(no_nms).generate(disk_prompt_head, orig_hw, SIZE)) > len(records)  # NMS acted


def test_generate_reports_prompt_points_in_original_pixels():
    records = AutomaticMaskGenerator(AmgConfig(points_per_side=4)).generate(disk_prompt_head, (100, 300), SIZE)
    grid = {tuple(p) for p in (point_grid(4) * np.array([300, 100], np.float32)).tolist()}
    assert records and all(tuple(r["point_coords"][0]) in grid for r in records)
    for r in records:  # the stable small disk sits on its prompt point
        x, y = r["point_coords"][0]
        assert r["segmentation"][int(y), int(x)]


def test_generate_thresholds_filter_everything():
    config = AmgConfig(points_per_side=4, pred_iou_thresh=0.9999)
    assert AutomaticMaskGenerator(config).generate(disk_prompt_head, (64, 64), SIZE) == []
    with pytest.raises(ValueError, match="points_per_side"):
        AmgConfig(points_per_side=0)


def _sam_remove_small_regions(mask, area_thresh, mode):
    """segment-anything's remove_small_regions with skimage's 8-connected labelling in place of cv2."""
    from skimage.measure import label  # noqa: PLC0415 (optional: test extra)

    correct_holes = mode == "holes"
    regions, n = label(correct_holes ^ mask, connectivity=2, return_num=True)
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not correct_holes:
        fill = [i for i in range(n + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_matches_segment_anything(seed, mode):
    rng = np.random.default_rng(seed)
    mask = rng.random((60, 80)) > (0.35 if mode == "holes" else 0.75)
    mask[10:40, 20:60] = mode == "holes"
    for area in (1, 3, 10, 10_000):
        out, changed = remove_small_regions(mask, area, mode)
        ref, ref_changed = _sam_remove_small_regions(mask, area, mode)
        assert changed == ref_changed
        np.testing.assert_array_equal(out, ref)


def test_remove_small_regions_edge_cases():
    empty = np.zeros((5, 6), bool)
    assert remove_small_regions(empty, 10, "islands") == (empty, False)
    out, changed = remove_small_regions(~empty, 10, "holes")
    assert not changed and out.all()
    diagonal = np.eye(4, dtype=bool)  # one 8-connected island of 4 pixels
    assert not remove_small_regions(diagonal, 4, "islands")[1]
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(empty, 1, "both")


def test_generate_with_min_region_area_cleans_masks():
    from skimage.measure import label  # noqa: PLC0415 (optional: test extra)

    def speckled_head(points, labels):
        logits, iou = disk_prompt_head(points, labels)
        logits[:, :, ::16, ::16] = 50.0  # isolated single-pixel islands in every candidate
        return logits, iou

    config = AmgConfig(points_per_side=4, stability_score_thresh=0.5, min_mask_region_area=30)
    records = AutomaticMaskGenerator(config).generate(speckled_head, (128, 128), SIZE)
    assert records
    for r in records:
        regions = label(r["segmentation"], connectivity=2)
        assert np.bincount(regions.ravel())[1:].min() >= 30
        assert r["area"] == int(r["segmentation"].sum())


def test_candidates_collected_in_parts_and_merged_equal_one_collection():
    """The pipeline post-processes auto mode in parallel parts of a few prompts; merged in order they
    must equal collecting the whole batch at once (same masks, boxes, scores, hence the same NMS)."""
    generator = AutomaticMaskGenerator(AmgConfig(points_per_side=6, points_per_batch=36, stability_score_thresh=0.5))
    hw = (150, 210)
    batches = generator.prompt_batches(hw, SIZE)
    outputs = [disk_prompt_head(points, labels) for _, points, labels in batches]
    whole = generator.collect(batches, outputs, hw)
    parts = [
        generator.collect([(batches[0][0][sl], None, None)], [(outputs[0][0][sl], outputs[0][1][sl])], hw)
        for sl in batch_slices(36, 5)
    ]
    merged = merge_candidates(parts)
    assert len(whole.logits) >= 3 and merged.ious == whole.ious
    np.testing.assert_array_equal(np.array(merged.boxes), np.array(whole.boxes))
    everyone = list(range(len(whole.logits)))
    np.testing.assert_array_equal(
        merged.masks(everyone, hw, 0.0, 1.0).columns, whole.masks(everyone, hw, 0.0, 1.0).columns
    )
    np.testing.assert_array_equal(np.array(merged.boxes), np.array(whole.boxes))
    a, b = generator.generate_rle(batches, outputs, hw), generator.generate_rle(batches, outputs, hw, merged)
    assert a["masks"].rle() == b["masks"].rle() and np.array_equal(a["iou"], b["iou"])


def test_without_a_stability_filter_only_survivors_get_a_stability_score_and_it_is_the_same():
    """stability_score_thresh 0 filters nothing, so candidates are collected without a score (None) and only
    the NMS survivors get theirs, from the same upsampled logits: masks and scores equal those of a run that
    scores every candidate to filter at a threshold that keeps them all."""
    hw = (150, 210)
    plain = AutomaticMaskGenerator(AmgConfig(points_per_side=6, points_per_batch=36, stability_score_thresh=0.0))
    scoring = AutomaticMaskGenerator(replace(plain.config, stability_score_thresh=1e-6))
    batches = plain.prompt_batches(hw, SIZE)
    outputs = [disk_prompt_head(points, labels) for _, points, labels in batches]
    found = plain.collect(batches, outputs, hw)
    assert len(found.stabilities) == len(scoring.collect(batches, outputs, hw).stabilities) >= 3
    assert all(s is None for s in found.stabilities)
    a, b = plain.generate_rle(batches, outputs, hw), scoring.generate_rle(batches, outputs, hw)
    assert len(a["stability"]) >= 2 and a["masks"].rle() == b["masks"].rle()
    np.testing.assert_array_equal(a["stability"], b["stability"])
    np.testing.assert_array_equal(a["boxes"], b["boxes"])


def test_candidate_box_from_the_column_mask_equals_sam_box():
    """The NMS boxes (cv2.boundingRect of the column-major uint8 mask) equal SAM's batched_mask_to_box."""
    rng = np.random.default_rng(3)
    masks = rng.random((6, 23, 31)) > 0.97
    masks[0] = False  # empty → [0, 0, 0, 0]
    masks[1] = False
    masks[1, 22, 30] = True  # one corner pixel
    masks[2] = True
    for mask in masks:
        columns = np.ascontiguousarray(mask.T)
        np.testing.assert_array_equal(box_of_columns(columns), masks_to_boxes_xyxy(mask))
