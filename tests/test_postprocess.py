"""Post-processing of the concept and prompt heads vs transformers' Sam3 processors.

Tolerance: OpenCV's INTER_LINEAR quantizes its interpolation weights, so an upsampled value may
differ from torch's F.interpolate by up to ~4e-5 of the map's magnitude (measured; REL_TOL has
2.5x margin). A mask pixel can only differ where torch's value lies within that distance of the
threshold; the tests check exactly that, and that such pixels stay rare (< 1e-4 of the pixels)
on maps without exact ties at the threshold.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sam3_spec import SAM3_INPUTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "triton_repo" / "sam3" / "1"))

from postprocess import (  # noqa: E402
    MaskSet,
    best_mask_index,
    best_prompt_masks,
    concept_masks,
    decode_rle,
    encode_rle,
    gather_queries,
    masks_to_boxes_xyxy,
    prob_to_logit,
    scale_boxes,
    select_queries,
    sigmoid,
    upsample,
    upsample_binarize,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional
REL_TOL = 1e-4  # |OpenCV − torch| ≤ REL_TOL · max|map| on upsampled values


@pytest.fixture(scope="module")
def image_processor():
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor  # noqa: PLC0415 (optional: export extra)

    return Sam3ImageProcessor()


def _torch_resize(x: np.ndarray, hw) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x)[None], size=hw, mode="bilinear", align_corners=False)[0].numpy()


def _assert_binarized_like_torch(ours: np.ndarray, x: np.ndarray, hw, threshold: float, ties: bool = False):
    """ours == torch_resize(x) > t, except where torch's value is within tolerance of t (and, for
    maps without exact ties at t, such pixels are < 1e-4 of all)."""
    ref = _torch_resize(x, hw)
    near = np.abs(ref - np.float32(threshold)) <= REL_TOL * max(1.0, float(np.abs(x).max()))
    assert not ((ours != (ref > threshold)) & ~near).any()
    assert ties or (ours != (ref > threshold)).mean() < 1e-4


@pytest.mark.parametrize(
    "in_hw, out_hw",
    [
        ((288, 288), (600, 400)),
        ((288, 288), (100, 130)),
        ((7, 5), (13, 3)),
        ((32, 32), (32, 77)),
        ((16, 16), (16, 16)),
        ((288, 288), (1000, 1500)),
    ],
)
def test_resize_bilinear_matches_torch(in_hw, out_hw):
    x = (np.random.default_rng(0).standard_normal((3,) + in_hw) * 10).astype(np.float32)
    out = np.stack([upsample(m, out_hw).T for m in x])  # upsample gives [W, H]
    assert out.shape == (3,) + out_hw and out.dtype == np.float32
    np.testing.assert_allclose(out, _torch_resize(x, out_hw), rtol=0, atol=REL_TOL * np.abs(x).max())


@pytest.mark.parametrize("in_hw, out_hw", [((288, 288), (512, 512)), ((64, 64), (150, 97)), ((7, 7), (13, 3))])
def test_upsample_binarize_equals_torch_thresholding(in_hw, out_hw):
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.standard_normal((4, in_hw[0] // 7 + 1, in_hw[1] // 7 + 1)), np.ones((7, 7)))
    maps = {
        "noise": rng.standard_normal((4,) + in_hw) * 5,
        "blocks": smooth[:, : in_hw[0], : in_hw[1]] * 3,
        "integers": np.round(rng.standard_normal((4,) + in_hw) * 1.5),
    }  # exact ties at the thresholds
    for name, x in maps.items():
        x = x.astype(np.float32)
        for t in (-1.0, 0.0, 0.5):
            masks = upsample_binarize(x, out_hw, t)
            assert len(masks) == 4 and masks.columns.shape == (4, out_hw[1], out_hw[0]), name
            _assert_binarized_like_torch(masks.dense(), x, out_hw, t, ties=name == "integers")
    assert len(upsample_binarize(np.zeros((0, 8, 8), np.float32), (5, 6), 0.0)) == 0


def test_sigmoid_saturates_without_warnings():
    with np.errstate(all="raise"):
        out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(out, np.array([0.0, 0.5, 1.0], np.float32))


def _concept_outputs(m: int, n: int = 3, q: int = 20):
    rng = np.random.default_rng(m)
    logits = (rng.standard_normal((n, q)) * 2).astype(np.float32)
    presence = np.array([[2.0], [0.5], [-6.0]], np.float32)[:n]
    boxes = np.sort(rng.random((n, q, 4)).astype(np.float32).reshape(n, q, 2, 2), axis=2).transpose(0, 1, 3, 2)
    boxes = np.ascontiguousarray(boxes).reshape(n, q, 4) * 1.2 - 0.1  # some boxes outside the image
    masks = (rng.standard_normal((n, q, m, m)) * 4).astype(np.float32)
    return logits, presence, boxes.astype(np.float32), masks


@pytest.mark.parametrize("m, hw", [(32, (50, 70)), (288, (300, 200))])
def test_concept_post_processing_matches_post_process_instance_segmentation(m, hw, image_processor):
    logits, presence, boxes, masks = _concept_outputs(m)
    outputs = SimpleNamespace(
        pred_logits=torch.from_numpy(logits),
        presence_logits=torch.from_numpy(presence),
        pred_boxes=torch.from_numpy(boxes),
        pred_masks=torch.from_numpy(masks),
    )
    ref = image_processor.post_process_instance_segmentation(
        outputs, threshold=0.4, mask_threshold=0.5, target_sizes=[hw] * len(logits)
    )
    kept = select_queries(logits, presence, threshold=0.4)
    sets = [upsample_binarize(sigmoid(masks[n, k]), hw, 0.5) for n, (k, _) in enumerate(kept)]
    assert len(kept) == 3 and sum(len(k) for k, _ in kept) > 0 and len(kept[2][0]) == 0  # presence -6 kills all
    for n, ((k, scores), r) in enumerate(zip(kept, ref)):
        np.testing.assert_allclose(scores, r["scores"].numpy(), rtol=1e-6)
        h, w = hw
        clipped = np.clip(r["boxes"].numpy(), 0, np.array([w, h, w, h], np.float32))
        np.testing.assert_allclose(scale_boxes(boxes[n], k, hw), clipped, rtol=1e-6)
        if len(k):
            _assert_binarized_like_torch(sets[n].dense(), sigmoid(masks[n, k]), hw, 0.5)
            assert (sets[n].dense() != r["masks"].numpy().astype(bool)).mean() < 1e-4


def test_mask_head_inputs_gather_only_kept_queries():
    queries = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2)
    memory = np.arange(3 * 4, dtype=np.float32).reshape(3, 1, 2, 2)
    kept = [np.array([1, 4]), np.array([], np.int64), np.array([0])]
    rows, mem, padded = gather_queries(queries, memory, kept)
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(mem, memory[[0, 2]])
    np.testing.assert_array_equal(padded, [[queries[0, 1], queries[0, 4]], [queries[2, 0], [0, 0]]])
    pred = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    sets = concept_masks(pred, [2, 1], (9, 9), 0.5)
    assert [len(s) for s in sets] == [2, 1]  # the padding row of prompt 2 is dropped
    np.testing.assert_array_equal(sets[1].dense(), upsample_binarize(sigmoid(pred[1, :1]), (9, 9), 0.5).dense())
    assert len(gather_queries(queries, memory, [np.array([], np.int64)] * 3)[0]) == 0


def test_prompt_masks_match_post_process_masks(image_processor):
    rng = np.random.default_rng(2)
    pred = (rng.standard_normal((2, 3, 64, 64)) * 5).astype(np.float32)
    iou = np.array([[0.1, 0.9, 0.3], [0.7, 0.2, 0.1]], np.float32)
    hw = (123, 231)
    ref = image_processor.post_process_masks([torch.from_numpy(pred)], [list(hw)])[0].numpy()
    masks, iou_out = best_prompt_masks([{"pred_masks": pred, "iou_scores": iou}], hw, prob_to_logit(0.5))
    np.testing.assert_array_equal(iou_out, iou)
    assert (masks.dense() != ref[[0, 1], [1, 0]]).mean() < 1e-4
    _assert_binarized_like_torch(masks.dense(), pred[[0, 1], [1, 0]], hw, 0.0)
    stricter, _ = best_prompt_masks([{"pred_masks": pred, "iou_scores": iou}], hw, prob_to_logit(0.9))
    assert stricter.dense().sum() < masks.dense().sum() and not (stricter.dense() & ~masks.dense()).any()


def test_prob_to_logit_covers_the_whole_mask_threshold_range():
    assert prob_to_logit(0.5) == 0.0
    assert abs(prob_to_logit(0.88) - np.log(0.88 / 0.12)) < 1e-12
    low, high = next(t.bounds for t in SAM3_INPUTS if t.name == "mask_threshold")
    assert prob_to_logit(low) == -np.inf and prob_to_logit(high) == np.inf  # every accepted value works
    x = np.zeros((1, 4, 4), np.float32)
    assert upsample_binarize(x, (8, 8), prob_to_logit(low)).dense().all()
    assert not upsample_binarize(x, (8, 8), prob_to_logit(high)).dense().any()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        prob_to_logit(1.5)
    np.testing.assert_array_equal(best_mask_index(np.array([[0.1, 0.9, 0.3], [0.7, 0.2, 0.1]])), [1, 0])


def test_rle_roundtrip_and_matches_transformers_uncompressed_rle():
    from transformers.models.sam3.image_processing_sam3 import _mask_to_rle  # noqa: PLC0415 (optional: export extra)

    rng = np.random.default_rng(3)
    masks = rng.random((4, 37, 53)) > 0.6
    masks[1] = False
    masks[2] = True
    counts = encode_rle(masks)
    assert len(counts) == 4 and all(isinstance(c, bytes) for c in counts)
    for c, m, ref in zip(counts, masks, _mask_to_rle(torch.from_numpy(masks))):
        np.testing.assert_array_equal(decode_rle(c, m.shape), m)
        assert mask_utils.frPyObjects(ref, *ref["size"])["counts"] == c
    assert encode_rle(np.zeros((0, 5, 5), bool)) == []
    again = MaskSet.from_rle(counts, (37, 53))
    np.testing.assert_array_equal(again.dense(), masks)
    np.testing.assert_array_equal(again.areas(), masks.sum(axis=(1, 2)))
    assert again.rle() == counts


def test_device_rle_equals_pycocotools_encoding():
    """postprocess_torch finds run boundaries with torch (on the GPU there) and compresses them on the
    host: the bytes must be pycocotools' own, for empty, full, first-pixel-on and speckled masks."""
    from postprocess_torch import rle_of_columns  # noqa: PLC0415 (imports torch)

    rng = np.random.default_rng(5)
    masks = rng.random((6, 37, 53)) > 0.6
    masks[1], masks[2], masks[3] = False, True, False
    masks[3, 0, 0] = masks[3, 36, 52] = True  # first and last pixel only
    masks[4, :, 0] = True  # first column on, the rest speckled
    columns = torch.from_numpy(np.ascontiguousarray(masks.transpose(0, 2, 1)))
    assert rle_of_columns(columns) == encode_rle(masks)
    assert rle_of_columns(columns[:0]) == []


def test_concat_joins_encoded_sets_without_decoding(monkeypatch):
    """The gpu target's sets arrive RLE-encoded: joining a text request's concepts must not decode them
    (a decode + re-encode would cost more than the device saved); dense sets still join densely."""
    import postprocess  # noqa: PLC0415 (the module object, to guard its decoder)

    rng = np.random.default_rng(6)
    masks = rng.random((5, 21, 34)) > 0.5
    parts = [MaskSet.from_rle(encode_rle(masks[:2]), (21, 34)), MaskSet.empty((21, 34))]
    parts.append(MaskSet.from_rle(encode_rle(masks[2:]), (21, 34)))
    with monkeypatch.context() as m:
        m.setattr(postprocess.mask_utils, "decode", lambda *a: pytest.fail("decoded"))
        joined = MaskSet.concat(parts, (21, 34))
        assert len(joined) == 5 and joined.rle() == encode_rle(masks)
    np.testing.assert_array_equal(joined.dense(), masks)
    dense = [upsample_binarize(np.full((1, 4, 4), v, np.float32), (21, 34), 0.5) for v in (0.0, 1.0)]
    np.testing.assert_array_equal(MaskSet.concat(dense, (21, 34)).dense().sum(axis=(1, 2)), [0, 21 * 34])
    assert MaskSet.concat([MaskSet.empty((21, 34)), dense[1]], (21, 34)) is dense[1]  # one set: no copy


def test_masks_to_boxes_matches_transformers():
    from transformers.models.sam3.image_processing_sam3 import _batched_mask_to_box  # noqa: PLC0415 (optional: export extra)

    rng = np.random.default_rng(4)
    masks = np.zeros((5, 30, 40), bool)
    masks[0, 3:9, 5:20] = True
    masks[1, 29, 39] = True
    masks[3] = rng.random((30, 40)) > 0.97
    masks[4, 0, :] = True
    ref = _batched_mask_to_box(torch.from_numpy(masks)).numpy()
    out = masks_to_boxes_xyxy(masks)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out[2], [0, 0, 0, 0])
    np.testing.assert_array_equal(masks_to_boxes_xyxy(masks[0]), [5, 3, 19, 8])
    dense = MaskSet(np.ascontiguousarray(masks.transpose(0, 2, 1)), (30, 40))
    np.testing.assert_array_equal(dense.boxes_xyxy(), ref)  # OpenCV on the dense masks gives SAM's boxes
    from_rle = MaskSet.from_rle(dense.rle(), (30, 40)).boxes_xyxy()
    np.testing.assert_array_equal(from_rle, ref)  # the RLE path (pycocotools toBbox) gives SAM's boxes too
