"""Post-processing of the concept and prompt heads vs transformers' Sam3 processors."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "triton_repo" / "sam3" / "1"))

from postprocess import (  # noqa: E402
    BilinearResizer, ContourThresholder, best_mask_index, concept_detections, decode_rle, encode_rle,
    masks_to_boxes_xyxy, prob_to_logit, prompt_masks, resize_bilinear, sigmoid, upsample_binarize,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def image_processor():
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    return Sam3ImageProcessor()


def _torch_resize(x: np.ndarray, hw) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x)[None], size=hw, mode="bilinear", align_corners=False)[0].numpy()


@pytest.mark.parametrize("in_hw, out_hw", [((288, 288), (600, 400)), ((288, 288), (100, 130)), ((7, 5), (13, 3)),
                                           ((32, 32), (32, 77)), ((16, 16), (16, 16))])
def test_resize_bilinear_matches_torch(in_hw, out_hw):
    x = (np.random.default_rng(0).standard_normal((3,) + in_hw) * 10).astype(np.float32)
    out = resize_bilinear(x, out_hw)
    assert out.shape == (3,) + out_hw and out.dtype == np.float32
    np.testing.assert_allclose(out, _torch_resize(x, out_hw), rtol=0, atol=2e-5)


def test_resizer_buffer_and_binarize_agree():
    x = sigmoid(np.random.default_rng(1).standard_normal((4, 40, 40)) * 3)
    resizer = BilinearResizer((40, 40), (90, 70))
    expected = np.stack([resizer.resize(m).copy() for m in x])
    np.testing.assert_array_equal(expected, resize_bilinear(x, (90, 70)))
    np.testing.assert_array_equal(upsample_binarize(x, (90, 70), 0.5), expected > np.float32(0.5))
    assert upsample_binarize(x[:0], (90, 70), 0.5).shape == (0, 90, 70)


def _test_maps(side: int) -> dict:
    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    return {"noise": (rng.standard_normal((side, side)) * 5).astype(np.float32),
            "disk": (20 * (side / 3 - np.hypot(yy - side / 2, xx - side / 3))).astype(np.float32),
            "integers": np.round(rng.standard_normal((side, side)) * 1.5).astype(np.float32),  # ties at thresholds
            "constant": np.ones((side, side), np.float32)}


@pytest.mark.parametrize("dense_fraction", [0.15, 2.0])  # 2.0: never fall back to the dense resize
@pytest.mark.parametrize("side, out_hw", [(288, (450, 300)), (64, (150, 97)), (7, (13, 3)), (32, (32, 32))])
def test_contour_thresholder_equals_dense_thresholding(side, out_hw, dense_fraction, monkeypatch):
    monkeypatch.setattr(ContourThresholder, "DENSE_FRACTION", dense_fraction)
    thresholds = [-1.0, 0.0, 1.0]
    thresholder, resizer = ContourThresholder((side, side), out_hw), BilinearResizer((side, side), out_hw)
    for name, x in _test_maps(side).items():
        decided, full = thresholder.analyze(x, thresholds), resizer.resize(x)
        for i, t in enumerate(thresholds):
            expected = full > np.float32(t)
            assert decided.counts[i] == expected.sum(), (name, t)
            np.testing.assert_array_equal(decided.mask(i), expected, err_msg=name)
            fortran = decided.mask(i, fortran=True)
            assert fortran.flags.f_contiguous
            np.testing.assert_array_equal(fortran, expected, err_msg=name)


def test_sigmoid_saturates_without_warnings():
    with np.errstate(all="raise"):
        out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(out, np.array([0.0, 0.5, 1.0], np.float32))


@pytest.mark.parametrize("m, hw", [(32, (50, 70)), (288, (300, 200))])
def test_concept_detections_match_post_process_instance_segmentation(m, hw, image_processor):
    rng = np.random.default_rng(m)
    n, q = 3, 20
    logits = (rng.standard_normal((n, q)) * 2).astype(np.float32)
    presence = np.array([[2.0], [0.5], [-6.0]], np.float32)
    boxes = np.sort(rng.random((n, q, 4)).astype(np.float32).reshape(n, q, 2, 2), axis=2).transpose(0, 1, 3, 2)
    boxes = np.ascontiguousarray(boxes).reshape(n, q, 4)
    masks = (rng.standard_normal((n, q, m, m)) * 4).astype(np.float32)
    outputs = SimpleNamespace(pred_logits=torch.from_numpy(logits), presence_logits=torch.from_numpy(presence),
                              pred_boxes=torch.from_numpy(boxes), pred_masks=torch.from_numpy(masks))
    ref = image_processor.post_process_instance_segmentation(outputs, threshold=0.4, mask_threshold=0.5,
                                                             target_sizes=[hw] * n)
    mine = concept_detections(logits, presence, boxes, masks, hw, threshold=0.4, mask_threshold=0.5)
    assert len(mine) == n and sum(len(s) for s, _, _ in mine) > 0
    for (scores, bxs, msk), r in zip(mine, ref):
        np.testing.assert_allclose(scores, r["scores"].numpy(), rtol=1e-6)
        np.testing.assert_allclose(bxs, r["boxes"].numpy(), rtol=1e-6)
        assert msk.dtype == bool and msk.shape == (len(scores),) + hw  # transformers keeps (0, m, m) when empty
        if len(scores):
            assert (msk != r["masks"].numpy().astype(bool)).mean() < 1e-5
    assert len(mine[2][0]) == 0  # presence -6 kills every query


def test_prompt_masks_match_post_process_masks(image_processor):
    rng = np.random.default_rng(2)
    pred = (rng.standard_normal((2, 3, 64, 64)) * 5).astype(np.float32)
    hw = (123, 231)
    ref = image_processor.post_process_masks([torch.from_numpy(pred)], [list(hw)])[0].numpy()
    out = prompt_masks(pred, hw)
    assert out.shape == (2, 3) + hw and out.dtype == bool
    assert (out != ref).mean() < 1e-5
    np.testing.assert_array_equal(prompt_masks(pred, hw, prob_to_logit(0.5)), out)
    stricter = prompt_masks(pred, hw, prob_to_logit(0.9))
    assert stricter.sum() < out.sum() and not (stricter & ~out).any()


def test_prob_to_logit_and_best_index():
    assert prob_to_logit(0.5) == 0.0
    assert abs(prob_to_logit(0.88) - np.log(0.88 / 0.12)) < 1e-12
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        prob_to_logit(1.0)
    np.testing.assert_array_equal(best_mask_index(np.array([[0.1, 0.9, 0.3], [0.7, 0.2, 0.1]])), [1, 0])


def test_rle_roundtrip_and_matches_transformers_uncompressed_rle():
    from pycocotools import mask as mask_utils
    from transformers.models.sam3.image_processing_sam3 import _mask_to_rle

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


def test_masks_to_boxes_matches_transformers():
    from transformers.models.sam3.image_processing_sam3 import _batched_mask_to_box

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
