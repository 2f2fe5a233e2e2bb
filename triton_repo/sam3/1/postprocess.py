"""Raw model outputs → detections and masks in original-image pixels (numpy + pycocotools).

Matches transformers 5.23:
- ``concept_detections``  = Sam3Processor.post_process_instance_segmentation
  (score = sigmoid(logit) * sigmoid(presence), kept where score > threshold in query order,
  no top-k, no NMS; boxes xyxy scaled by W,H and not clipped; masks: sigmoid, bilinear
  upsample of the probabilities, > mask_threshold);
- ``prompt_masks``        = Sam3TrackerProcessor.post_process_masks
  (bilinear upsample of the mask LOGITS, > threshold in logit space).
Bilinear resizing is torch's ``F.interpolate(mode="bilinear", align_corners=False)``
(no antialias) done separably: width pass, then height pass, float32.
"""

from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise 1 / (1 + exp(-x)) in float32 (saturates to 0 / 1 without warnings)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        return np.float32(1) / (np.float32(1) + np.exp(-x))


def prob_to_logit(p: float) -> float:
    """Probability threshold in (0, 1) → logit threshold (0.5 → 0.0)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability threshold must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


# ---------------------------------------------------------------- bilinear resize

def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 [out] int64 and weights w0, w1 [out] float32 along one axis.

    torch's align_corners=False rule: scale = float32(in / out); src = max(scale*(dst+0.5)
    - 0.5, 0) rounded once to float32 (torch's CPU kernel fuses it into one FMA);
    i0 = floor(src), i1 = min(i0 + 1, in - 1), w1 = src - i0, w0 = 1 - w1.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    dst = np.arange(out_size, dtype=np.float64)
    src = np.maximum((scale * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


class BilinearResizer:
    """Bilinear resize of 2-D float32 maps from ``in_hw`` to ``out_hw`` (align_corners=False).

    Separable: a width pass, then each output row mixes two rows of the width-resized map
    (no dense matrices). ``resize`` reuses two HxW float32 buffers, so call it one map at a
    time and copy (or threshold) the result before the next call.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.cols = linear_taps(in_hw[1], out_hw[1])
        r0, r1, rw0, rw1 = linear_taps(in_hw[0], out_hw[0])
        self.rows = (r0, r1, rw0[:, None], rw1[:, None])
        self._a = np.empty(self.out_hw, dtype=np.float32)
        self._b = np.empty(self.out_hw, dtype=np.float32)

    def resize(self, x: np.ndarray) -> np.ndarray:
        """[h, w] float32 → [H, W] float32 (a view of an internal buffer)."""
        c0, c1, cw0, cw1 = self.cols
        r0, r1, rw0, rw1 = self.rows
        tmp = x[:, c0] * cw0 + x[:, c1] * cw1  # [h, W]
        np.take(tmp, r0, axis=0, out=self._a)
        np.take(tmp, r1, axis=0, out=self._b)
        self._a *= rw0
        self._b *= rw1
        self._a += self._b
        return self._a


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [..., h, w] float32 to [..., H, W] float32 (align_corners=False)."""
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape((-1,) + x.shape[-2:])
    resizer = BilinearResizer(x.shape[-2:], out_hw)
    out = np.empty((flat.shape[0],) + tuple(out_hw), dtype=np.float32)
    for k in range(flat.shape[0]):
        out[k] = resizer.resize(flat[k])
    return out.reshape(x.shape[:-2] + tuple(out_hw))


def upsample_binarize(x: np.ndarray, out_hw: tuple[int, int], threshold: float) -> np.ndarray:
    """resize_bilinear(x) > threshold: [K, h, w] float32 → bool [K, H, W], one map at a time."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((x.shape[0],) + tuple(out_hw), dtype=bool)
    if x.shape[0]:
        resizer = BilinearResizer(x.shape[-2:], out_hw)
        for k in range(x.shape[0]):
            np.greater(resizer.resize(x[k]), np.float32(threshold), out=out[k])
    return out


# ---------------------------------------------------------------- concept (text / exemplar) head

def concept_detections(logits, presence, boxes_xyxy_norm, masks, orig_hw, threshold: float, mask_threshold: float):
    """Detections of each prompt from the concept head's raw outputs.

    logits [N, Q], presence [N, 1] logits; boxes_xyxy_norm [N, Q, 4] x0,y0,x1,y1 in [0, 1];
    masks [N, Q, m, m] mask logits; orig_hw (H, W); threshold and mask_threshold are
    probabilities. Returns a list of N tuples (scores float32 [D], boxes float32 [D, 4] xyxy px,
    masks bool [D, H, W]), detections in query order.
    """
    h, w = orig_hw
    scores = sigmoid(logits) * sigmoid(presence)
    scale = np.array([w, h, w, h], dtype=np.float32)
    results = []
    for n in range(scores.shape[0]):
        keep = np.flatnonzero(scores[n] > np.float32(threshold))
        boxes = np.asarray(boxes_xyxy_norm[n], dtype=np.float32)[keep] * scale
        probs = sigmoid(np.asarray(masks[n])[keep])
        results.append((scores[n][keep], boxes, upsample_binarize(probs, orig_hw, mask_threshold)))
    return results


# ---------------------------------------------------------------- prompt (point / box) head

def prompt_masks(pred_masks, orig_hw, mask_threshold: float = 0.0) -> np.ndarray:
    """Candidate masks of the prompt head at the original size, binarized.

    pred_masks [P, C, m, m] mask logits; mask_threshold in LOGIT space (transformers'
    default 0.0 = probability 0.5; use prob_to_logit for a probability). Returns bool
    [P, C, H, W].
    """
    p, c, m1, m2 = pred_masks.shape
    flat = np.asarray(pred_masks, dtype=np.float32).reshape(p * c, m1, m2)
    return upsample_binarize(flat, orig_hw, mask_threshold).reshape((p, c) + tuple(orig_hw))


def best_mask_index(iou_scores) -> np.ndarray:
    """Index of the candidate with the highest predicted IoU: [P, C] → int64 [P]."""
    return np.argmax(np.asarray(iou_scores), axis=-1).astype(np.int64)


# ---------------------------------------------------------------- masks → RLE / boxes

def encode_rle(masks: np.ndarray) -> list[bytes]:
    """bool [D, H, W] → D COCO compressed RLE ``counts`` (column-major, as pycocotools)."""
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8))  # H, W, D
    return [rle["counts"] for rle in mask_utils.encode(fortran)]


def decode_rle(counts: bytes, hw: tuple[int, int]) -> np.ndarray:
    """COCO compressed RLE ``counts`` of an (H, W) mask → bool [H, W]."""
    rle = {"size": [int(hw[0]), int(hw[1])], "counts": counts}
    return mask_utils.decode(rle).astype(bool)


def masks_to_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """bool [..., H, W] → float32 [..., 4] x0, y0, x1, y1 of the covered pixels.

    x1 / y1 are the last covered column / row (inclusive), as SAM's batched_mask_to_box;
    an empty mask gives [0, 0, 0, 0].
    """
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)
    empty = ~rows.any(axis=-1)
    h, w = masks.shape[-2:]
    y0, y1 = np.argmax(rows, axis=-1), h - 1 - np.argmax(rows[..., ::-1], axis=-1)
    x0, x1 = np.argmax(cols, axis=-1), w - 1 - np.argmax(cols[..., ::-1], axis=-1)
    boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
    boxes[empty] = 0
    return boxes
