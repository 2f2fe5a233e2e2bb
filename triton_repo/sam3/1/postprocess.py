"""Raw model outputs → detections and masks in original-image pixels (numpy, OpenCV, pycocotools).

Matches transformers 5.23:
- concept head (``select_queries`` + ``concept_masks``) = Sam3Processor.post_process_instance_segmentation:
  score = sigmoid(logit) * sigmoid(presence), kept where score > threshold, in query order, no
  top-k, no NMS; boxes xyxy scaled by W, H; masks: sigmoid, bilinear upsample of the
  probabilities, > mask_threshold;
- prompt head (``best_prompt_masks``) = Sam3TrackerProcessor.post_process_masks: bilinear
  upsample of the mask LOGITS, > threshold in logit space.

Bilinear resizing is OpenCV's ``INTER_LINEAR`` (the half-pixel rule of torch's
``F.interpolate(mode="bilinear", align_corners=False)``, no antialias) in float32. OpenCV
computes its interpolation weights in float32, so upsampled values differ from torch's by at
most ~4e-5 (relative 1e-5): only pixels whose value lies that close to the threshold can flip
(tests/test_postprocess.py measures it). Masks are upsampled transposed, so each one comes out
column-major — the layout pycocotools' RLE encoder reads — without a copy.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise 1 / (1 + exp(-x)) in float32 (saturates to 0 / 1 without warnings)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        return np.float32(1) / (np.float32(1) + np.exp(-x))


def prob_to_logit(p: float) -> float:
    """Probability threshold in [0, 1] → logit threshold (0.5 → 0.0, 0 → -inf, 1 → +inf).

    The ends are exact: "> -inf" keeps every pixel and "> +inf" none, as "> 0" and "> 1" do for
    probabilities. Outside [0, 1] raises ValueError (request.py rejects such requests first:
    the bounds of ``mask_threshold`` in the spec are this domain; a test keeps them so).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability threshold must be in [0, 1], got {p}")
    if p in (0.0, 1.0):
        return -math.inf if p == 0.0 else math.inf
    return math.log(p / (1.0 - p))


# ---------------------------------------------------------------- masks of one image


class MaskSet:
    """K binary masks of one (H, W) image, held column-major: ``columns`` bool [K, W, H].

    That is the memory layout of pycocotools' Fortran [H, W, K] input, so RLE encoding reads it
    in place. ``dense()`` gives the usual bool [K, H, W] (a copy).
    """

    def __init__(self, columns: np.ndarray | None, image_hw, rles: list[bytes] | None = None):
        """``columns`` bool [K, W, H], or None with ``rles`` (decoded only when asked for)."""
        self._columns, self.image_hw, self._rles = columns, tuple(int(v) for v in image_hw), rles

    @classmethod
    def empty(cls, image_hw) -> "MaskSet":
        h, w = image_hw
        return cls(np.zeros((0, w, h), bool), image_hw, [])

    @classmethod
    def from_rle(cls, counts: list[bytes], image_hw) -> "MaskSet":
        """From COCO compressed RLE ``counts`` of (H, W) masks (decoded once)."""
        return cls(None, image_hw, list(counts)) if counts else cls.empty(image_hw)

    @property
    def columns(self) -> np.ndarray:
        """bool [K, W, H] (decoded from the RLE on first use when built from_rle)."""
        if self._columns is None:
            decoded = mask_utils.decode([{"size": list(self.image_hw), "counts": c} for c in self._rles])
            self._columns = decoded.transpose(2, 1, 0).view(bool)  # [H, W, K] Fortran → [K, W, H]
        return self._columns

    @classmethod
    def concat(cls, sets: list["MaskSet"], image_hw) -> "MaskSet":
        """The masks of ``sets`` in order. Sets that all hold their RLE already (the gpu target's, encoded on
        the device) are joined as RLE, never decoded; otherwise as dense columns."""
        sets = [s for s in sets if len(s)]
        if not sets:
            return cls.empty(image_hw)
        if len(sets) == 1:  # one concept's masks: the set itself (a copy of K·H·W bytes saved)
            return sets[0]
        if all(s._rles is not None for s in sets):
            return cls.from_rle([c for s in sets for c in s._rles], image_hw)
        return cls(np.concatenate([s.columns for s in sets]), image_hw)

    def __len__(self) -> int:
        return len(self._rles) if self._columns is None else self._columns.shape[0]

    def rle(self) -> list[bytes]:
        """COCO compressed RLE ``counts`` of every mask (pycocotools; computed once)."""
        if self._rles is None:
            fortran = self.columns.view(np.uint8).transpose(2, 1, 0)  # [H, W, K], Fortran-contiguous
            self._rles = [r["counts"] for r in mask_utils.encode(np.asfortranarray(fortran))] if len(self) else []
        return self._rles

    def dense(self) -> np.ndarray:
        """bool [K, H, W], C-contiguous."""
        return np.ascontiguousarray(self.columns.transpose(0, 2, 1))

    def boxes_xyxy(self) -> np.ndarray:
        """float32 [K, 4] x0, y0, x1, y1 of the covered pixels, x1/y1 inclusive (SAM's
        batched_mask_to_box); an empty mask gives [0, 0, 0, 0]. From the dense masks where the set holds
        them (OpenCV, ``box_of_columns``: a speckled 512² mask 0.02 ms, its RLE 0.4 ms), else from the RLE
        (pycocotools)."""
        if not len(self):
            return np.zeros((0, 4), np.float32)
        if self._columns is not None:
            return np.stack([box_of_columns(c) for c in self._columns])
        xywh = mask_utils.toBbox([{"size": list(self.image_hw), "counts": c} for c in self.rle()])
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], axis=1).astype(np.float32)
        boxes[xywh[:, 2] == 0] = 0
        return boxes

    def areas(self) -> np.ndarray:
        """int64 [K] pixel count of every mask (from the RLE)."""
        if not len(self):
            return np.zeros(0, np.int64)
        return mask_utils.area([{"size": list(self.image_hw), "counts": c} for c in self.rle()]).astype(np.int64)


def box_of_columns(mask: np.ndarray) -> np.ndarray:
    """Inclusive xyxy box float32 [4] of a column-major bool mask [W, H] (SAM's batched_mask_to_box);
    an empty mask gives [0, 0, 0, 0]. cv2.boundingRect reads the non-zero pixels: its x runs along H."""
    row, col, rows, cols = cv2.boundingRect(mask.view(np.uint8))  # (x, y, w, h) of the [W, H] array
    if rows == 0:
        return np.zeros(4, np.float32)
    return np.array([col, row, col + cols - 1, row + rows - 1], np.float32)


def upsample(x: np.ndarray, image_hw, out: np.ndarray | None = None) -> np.ndarray:
    """One [m, m] float32 map → its bilinear upsampling, TRANSPOSED: float32 [W, H].

    ``out``: a float32 [W, H] buffer to write into (reusing one avoids a fresh 1 MB allocation per
    512² mask, which costs more than the resize itself).
    """
    h, w = (int(v) for v in image_hw)
    out = np.empty((w, h), np.float32) if out is None else out
    return cv2.resize(
        np.ascontiguousarray(np.asarray(x, np.float32).T), (h, w), dst=out, interpolation=cv2.INTER_LINEAR
    )


def upsample_binarize(x: np.ndarray, image_hw, threshold: float, probabilities: bool = False) -> MaskSet:
    """[K, m, m] float32 maps → MaskSet of upsample(map) > threshold; with ``probabilities`` the
    maps are logits whose sigmoid is upsampled (transformers' concept masks)."""
    h, w = (int(v) for v in image_hw)
    maps = _transposed(np.asarray(x, np.float32), probabilities)
    columns, buffer = np.empty((len(maps), w, h), bool), np.empty((w, h), np.float32)
    for k in range(len(maps)):
        cv2.resize(maps[k], (h, w), dst=buffer, interpolation=cv2.INTER_LINEAR)
        np.greater(buffer, np.float32(threshold), out=columns[k])
    return MaskSet(columns, image_hw)


def _transposed(x: np.ndarray, probabilities: bool) -> np.ndarray:
    """[K, m1, m2] → C-contiguous [K, m2, m1] (sigmoid applied in the same pass when asked)."""
    out = np.empty((x.shape[0], x.shape[2], x.shape[1]), np.float32)
    view = x.transpose(0, 2, 1)
    if not probabilities:
        out[...] = view
        return out
    with np.errstate(over="ignore"):
        np.negative(view, out=out)
        np.exp(out, out=out)
    out += np.float32(1)
    return np.reciprocal(out, out=out)


# ---------------------------------------------------------------- concept (text / exemplar) head


def select_queries(logits, presence, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Kept queries of each prompt: [(indices int64 [D], scores float32 [D])] in query order.

    logits [N, Q] and presence [N, 1] are logits; a query is kept where
    sigmoid(logit) * sigmoid(presence) > threshold.
    """
    scores = sigmoid(logits) * sigmoid(presence)
    keep = [np.flatnonzero(row > np.float32(threshold)) for row in scores]
    return [(k, row[k]) for k, row in zip(keep, scores)]


def gather_queries(queries, memory, kept: list[np.ndarray]):
    """Inputs of the mask head for the prompts with ≥ 1 kept query.

    queries [N, Q, C], memory [N, C, g, g]; kept: per prompt indices. Returns (rows int64 [R],
    memory [R, C, g, g], queries [R, K, C] zero-padded to K = the largest kept count).
    """
    rows = np.array([n for n, k in enumerate(kept) if len(k)], np.int64)
    width = max((len(k) for k in kept), default=0)
    padded = np.zeros((len(rows), width, queries.shape[-1]), np.float32)
    for r, n in enumerate(rows):
        padded[r, : len(kept[n])] = queries[n, kept[n]]
    return rows, np.ascontiguousarray(memory[rows]), padded


def concept_masks(pred_masks, counts: list[int], image_hw, mask_threshold: float) -> list[MaskSet]:
    """Masks of the mask head's rows: pred_masks [R, K, m, m] logits, ``counts`` valid rows each."""
    return [
        upsample_binarize(pred_masks[r, :n], image_hw, mask_threshold, probabilities=True) for r, n in enumerate(counts)
    ]


def scale_boxes(boxes_xyxy_norm, indices: np.ndarray, image_hw) -> np.ndarray:
    """float32 [D, 4] x1, y1, x2, y2 px of the kept queries, clipped to the image."""
    h, w = image_hw
    boxes = np.asarray(boxes_xyxy_norm, np.float32)[indices] * np.array([w, h, w, h], np.float32)
    return clip_boxes(boxes, image_hw)


def clip_boxes(boxes: np.ndarray, image_hw) -> np.ndarray:
    """xyxy px boxes clipped to [0, W] × [0, H] (float32 [D, 4])."""
    h, w = image_hw
    return np.clip(boxes, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)


def clip_scores(scores) -> np.ndarray:
    """Scores as float32 in [0, 1] (the IoU head's predictions may stray slightly outside)."""
    return np.clip(np.asarray(scores, np.float32), 0.0, 1.0)


# ---------------------------------------------------------------- prompt (point / box) head


def best_mask_index(iou_scores) -> np.ndarray:
    """Index of the candidate with the highest predicted IoU: [P, C] → int64 [P]."""
    return np.argmax(np.asarray(iou_scores), axis=-1).astype(np.int64)


def best_prompt_masks(outputs: list[dict], image_hw, logit_threshold: float):
    """Best candidate (highest predicted IoU) per object, upsampled and binarized.

    outputs: prompt-call results with pred_masks [P,C,m,m] logits and iou_scores [P,C]
    (chunks, concatenated in order). Returns (MaskSet of P masks, iou float32 [P,C]).
    Only the chosen candidate of each object is upsampled.
    """
    logits = np.concatenate([o["pred_masks"] for o in outputs])
    iou = np.concatenate([o["iou_scores"] for o in outputs]).astype(np.float32)
    chosen = logits[np.arange(len(iou)), best_mask_index(iou)]
    return upsample_binarize(chosen, image_hw, logit_threshold), iou


# ---------------------------------------------------------------- RLE helpers


def encode_rle(masks: np.ndarray) -> list[bytes]:
    """bool [D, H, W] → D COCO compressed RLE ``counts`` (column-major, as pycocotools)."""
    return MaskSet(np.ascontiguousarray(np.asarray(masks, bool).transpose(0, 2, 1)), masks.shape[1:]).rle()


def decode_rle(counts: bytes, hw: tuple[int, int]) -> np.ndarray:
    """COCO compressed RLE ``counts`` of an (H, W) mask → bool [H, W]."""
    rle = {"size": [int(hw[0]), int(hw[1])], "counts": counts}
    return mask_utils.decode(rle).astype(bool)


def masks_to_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """bool [..., H, W] → float32 [..., 4] x0, y0, x1, y1 of the covered pixels (inclusive x1/y1,
    SAM's batched_mask_to_box); an empty mask gives [0, 0, 0, 0]."""
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)
    empty = ~rows.any(axis=-1)
    h, w = masks.shape[-2:]
    y0, y1 = np.argmax(rows, axis=-1), h - 1 - np.argmax(rows[..., ::-1], axis=-1)
    x0, x1 = np.argmax(cols, axis=-1), w - 1 - np.argmax(cols[..., ::-1], axis=-1)
    boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
    boxes[empty] = 0
    return boxes
