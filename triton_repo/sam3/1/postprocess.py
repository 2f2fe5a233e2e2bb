"""Raw model outputs → detections and masks in original-image pixels (numpy + pycocotools).

Matches transformers 5.23:
- ``concept_detections``  = Sam3Processor.post_process_instance_segmentation
  (score = sigmoid(logit) * sigmoid(presence), kept where score > threshold in query order,
  no top-k, no NMS; boxes xyxy scaled by W,H and not clipped; masks: sigmoid, bilinear
  upsample of the probabilities, > mask_threshold);
- ``prompt_masks``        = Sam3TrackerProcessor.post_process_masks
  (bilinear upsample of the mask LOGITS, > threshold in logit space).
Bilinear resizing is torch's ``F.interpolate(mode="bilinear", align_corners=False)``
(no antialias) done separably in float32 (``BilinearResizer``; values within a few float32
ulps of torch, which fuses multiply-adds). Binarized masks come from ``ContourThresholder``,
which equals thresholding the dense resize but computes pixels only near mask contours
(~3-6 ms per smooth 288² mask at 1500x1000 on one CPU core).
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


class ContourThresholder:
    """Thresholds of bilinearly upsampled 2-D maps, computing exact values only near contours.

    Every output pixel of the upsampling is a convex combination of the 4 input values of
    its "cell" (the input rows i0, i1 and columns j0, j1 it reads). A cell whose 4 values are
    all above T (or all at most T) by a safety margin decides its pixels without computing
    them; only pixels of undecided cells are evaluated, with the same float32 arithmetic as
    ``BilinearResizer``. Results equal thresholding ``BilinearResizer.resize`` (the margin,
    1e-5 of the map's magnitude, is ~20x the float32 rounding of the interpolation).
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        self.resizer = BilinearResizer(in_hw, out_hw)
        self.out_hw = tuple(out_hw)
        self.row_groups = _tap_groups(self.resizer.rows[0], self.resizer.rows[1])
        self.col_groups = _tap_groups(*self.resizer.cols[:2])
        self.cell_pixels = np.outer(self.row_groups[3], self.col_groups[3])
        self.row_group = np.repeat(np.arange(len(self.row_groups[3])), self.row_groups[3])  # [H] → cell row
        self.col_group = np.repeat(np.arange(len(self.col_groups[3])), self.col_groups[3])  # [W] → cell col

    DENSE_FRACTION = 0.15

    def analyze(self, x: np.ndarray, thresholds) -> "Thresholded":
        """Decide every output pixel of map ``x`` [h, w] float32 for each threshold.

        Falls back to the dense resize when over ``DENSE_FRACTION`` of the pixels are
        undecided (noisy maps), where per-pixel gathers would be slower.
        """
        thresholds = np.asarray(thresholds, dtype=np.float32)
        lo, hi = self._cell_range(x)
        margin = np.float32(1e-5) * (np.float32(1) + np.abs(x).max())
        above = lo[None] > thresholds[:, None, None] + margin  # [T, Cr, Cc]
        below = hi[None] <= thresholds[:, None, None] - margin
        undecided = ~(above | below).all(axis=0)
        if self.cell_pixels[undecided].sum() > self.DENSE_FRACTION * self.cell_pixels.sum():
            return Thresholded.dense(self.resizer.resize(x), thresholds)
        ys, xs = self._cell_pixels(np.nonzero(undecided))
        values = self._values(x, ys, xs)
        decided = np.where(undecided[None], 0, self.cell_pixels[None] * above).sum(axis=(1, 2))
        counts = decided + (values[None] > thresholds[:, None]).sum(axis=1)
        return Thresholded(thresholds, counts, (self.row_group, self.col_group, above, ys, xs, values))

    def _cell_range(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Min and max [Cr, Cc] of the 4 input values of every cell."""
        top, bottom = x[self.row_groups[1]], x[self.row_groups[2]]
        left, right = self.col_groups[1], self.col_groups[2]
        low, high = np.minimum(top, bottom), np.maximum(top, bottom)
        return np.minimum(low[:, left], low[:, right]), np.maximum(high[:, left], high[:, right])

    def _cell_pixels(self, cells: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Output (y, x) int64 of every pixel of the given cells (row group, col group indices)."""
        ia, ib = cells
        nr, nc = self.row_groups[3][ia], self.col_groups[3][ib]
        n = nr * nc
        cell = np.repeat(np.arange(len(ia)), n)
        local = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        ys = self.row_groups[0][ia][cell] + local // nc[cell]
        xs = self.col_groups[0][ib][cell] + local % nc[cell]
        return ys, xs

    def _values(self, x: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Upsampled values at pixels (ys, xs), bit-equal to BilinearResizer.resize(x)[ys, xs]."""
        c0, c1, cw0, cw1 = self.resizer.cols
        r0, r1, rw0, rw1 = self.resizer.rows
        tmp = x[:, c0] * cw0 + x[:, c1] * cw1  # [h, W]
        return tmp[r0[ys], xs] * rw0[ys, 0] + tmp[r1[ys], xs] * rw1[ys, 0]


class Thresholded:
    """One map decided at several thresholds: ``counts[i]`` = pixels > thresholds[i]; ``mask(i)``.

    ``cells`` = (cell row of each output row [H], cell column of each output column [W],
    decided-above [T, Cr, Cc], ys, xs, exact values at (ys, xs)); ``full`` = the dense
    upsampled map instead.
    """

    def __init__(self, thresholds: np.ndarray, counts: np.ndarray, cells=None, full=None):
        self.thresholds, self.counts, self.cells, self.full = thresholds, counts, cells, full

    @classmethod
    def dense(cls, full: np.ndarray, thresholds: np.ndarray) -> "Thresholded":
        """From the dense upsampled map (copied)."""
        counts = np.array([np.count_nonzero(full > t) for t in thresholds], dtype=np.int64)
        return cls(thresholds, counts, full=full.copy())

    def mask(self, i: int, fortran: bool = False) -> np.ndarray:
        """bool [H, W]: the upsampled map > thresholds[i]; column-major memory if ``fortran``
        (what encode_rle needs, so it does not copy)."""
        if self.full is not None:
            out = self.full > self.thresholds[i]
            return np.asfortranarray(out) if fortran else out
        row_group, col_group, above, ys, xs, values = self.cells
        if fortran:
            out_t = np.take(np.take(above[i].T, row_group, axis=1), col_group, axis=0)  # [W, H]
            out_t[xs, ys] = values > self.thresholds[i]
            return out_t.T
        out = np.take(np.take(above[i], col_group, axis=1), row_group, axis=0)
        out[ys, xs] = values > self.thresholds[i]
        return out


def _tap_groups(i0: np.ndarray, i1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of consecutive outputs reading the same input pair: (first output, i0, i1, length)."""
    starts = np.flatnonzero(np.r_[True, (i0[1:] != i0[:-1]) | (i1[1:] != i1[:-1])])
    lengths = np.diff(np.r_[starts, len(i0)])
    return starts, i0[starts], i1[starts], lengths


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
    """resize_bilinear(x) > threshold: [K, h, w] float32 → bool [K, H, W] (ContourThresholder)."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((x.shape[0],) + tuple(out_hw), dtype=bool)
    if x.shape[0]:
        thresholder = ContourThresholder(x.shape[-2:], out_hw)
        for k in range(x.shape[0]):
            out[k] = thresholder.analyze(x[k], [threshold]).mask(0)
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
    fortran = np.moveaxis(masks, 0, -1)  # H, W, D: a view, Fortran-ordered when each mask is
    if not fortran.flags.f_contiguous:
        fortran = np.asfortranarray(fortran)
    return [rle["counts"] for rle in mask_utils.encode(fortran.view(np.uint8))]


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


def best_prompt_masks(outputs: list[dict], orig_hw, logit_threshold: float):
    """Best candidate (highest predicted IoU) per object, upsampled and binarized.

    outputs: prompt-call results with pred_masks [P,C,m,m] logits and iou_scores [P,C]
    (chunks, concatenated in order). Returns (masks bool [P,H,W], iou float32 [P,C]).
    Only the chosen candidate of each object is upsampled.
    """
    logits = np.concatenate([o["pred_masks"] for o in outputs])
    iou = np.concatenate([o["iou_scores"] for o in outputs]).astype(np.float32)
    rows, best = np.arange(len(iou)), best_mask_index(iou)
    return prompt_masks(logits[rows, best][:, None], orig_hw, logit_threshold)[:, 0], iou
