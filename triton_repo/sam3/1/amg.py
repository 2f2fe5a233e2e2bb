"""Automatic mask generation ("segment everything") around the prompt head, in numpy.

SAM's automatic mask generator without crops: prompt the prompt head with a regular grid of
single foreground points, keep candidates whose predicted IoU and stability score pass their
thresholds, drop duplicates with box NMS, optionally clean small islands/holes. The same
steps and arithmetic as transformers' mask-generation pipeline (``filter_masks`` +
``post_process_for_mask_generation``) and segment-anything's ``SamAutomaticMaskGenerator``:
- candidate masks are upsampled (bilinear, as ``post_process_masks``) to the original size,
  logits kept, before the stability score and binarization;
- boxes are SAM's inclusive mask boxes; NMS (torchvision's rule) ranks by predicted IoU.

Defaults (``AmgConfig``): the request defaults of sam3_spec.py for points per side (16 = 256
prompts; SAM uses 32 = 1024 on a GPU: 16 keeps CPU serving in seconds), points per batch,
pred_iou_thresh and stability_score_thresh; stability offset 1.0, mask threshold 0.0 (logits),
box_nms_thresh 0.7, min_mask_region_area 0 (small-region cleanup off, as SAM).

Each candidate passing the IoU filter is upsampled to H x W (OpenCV, see postprocess.py), counted at
mask_threshold ± offset for the stability score where stability_score_thresh > 0 filters on it (else only
the NMS survivors get theirs, as transformers computes it only to filter), and binarized for its box. Only
the survivors are upsampled again, binarized and RLE-encoded; the kept masks stay RLE
(``generate_rle``) until a caller asks for dense masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from postprocess import MaskSet, box_of_columns, encode_rle, masks_to_boxes_xyxy, upsample
from preprocess import scale_points

from sam3_spec import SAM3_INPUTS

SPECS = {t.name: t for t in SAM3_INPUTS}  # the request defaults (sam3_spec.py)

# run_prompt_batch(points [P,1,2] float32 px in the model frame, labels [P,1] int64)
#   -> (pred_masks [P,C,m,m] float32 logits, iou_scores [P,C] float32)
PromptFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class AmgConfig:
    """Settings of automatic mask generation (see the module docstring for the defaults)."""

    points_per_side: int = SPECS["points_per_side"].default
    points_per_batch: int = SPECS["points_per_batch"].default
    pred_iou_thresh: float = SPECS["pred_iou_thresh"].default
    stability_score_thresh: float = SPECS["stability_score_thresh"].default
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0

    def __post_init__(self):
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError(
                f"points_per_side ({self.points_per_side}) and points_per_batch ({self.points_per_batch}) must be >= 1"
            )


# ---------------------------------------------------------------- building blocks


def point_grid(points_per_side: int) -> np.ndarray:
    """Regular grid [n*n, 2] float32 of (x, y) in [0, 1], cell centers, x fastest (SAM's build_point_grid)."""
    n = points_per_side
    offset = np.float32(1 / (2 * n))
    side = _linspace_f32(offset, np.float32(1) - offset, n)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def _linspace_f32(start: np.float32, end: np.float32, steps: int) -> np.ndarray:
    """torch.linspace in float32: first half start + i*step, second half end - (steps-1-i)*step."""
    if steps == 1:
        return np.array([start], dtype=np.float32)
    step = (end - start) / np.float32(steps - 1)
    i = np.arange(steps)
    first = start + step * i.astype(np.float32)
    second = end - step * (steps - 1 - i).astype(np.float32)
    return np.where(i < steps // 2, first, second).astype(np.float32)


def batch_slices(total: int, batch: int) -> list[slice]:
    """Consecutive slices of at most ``batch`` items covering range(total)."""
    return [slice(i, min(i + batch, total)) for i in range(0, total, batch)]


def stability_score(mask_logits: np.ndarray, mask_threshold: float, offset: float) -> np.ndarray:
    """IoU of the masks binarized at threshold + offset and threshold - offset.

    mask_logits [..., H, W] float32 → float32 [...] (NaN where both masks are empty), as
    transformers' ``_compute_stability_score``.
    """
    inter = np.count_nonzero(mask_logits > np.float32(mask_threshold + offset), axis=(-2, -1))
    union = np.count_nonzero(mask_logits > np.float32(mask_threshold - offset), axis=(-2, -1))
    return _ratio(inter, union)


def _stability(up: np.ndarray, mask_threshold: float, offset: float, scratch: np.ndarray) -> float:
    """``stability_score`` of one upsampled logit map (numpy's ``>`` in float32, as transformers'
    ``_compute_stability_score``); ``scratch``: a bool buffer of its shape."""
    t, off = np.float32(mask_threshold), np.float32(offset)
    inter = np.count_nonzero(np.greater(up, t + off, out=scratch))
    union = np.count_nonzero(np.greater(up, t - off, out=scratch))
    return float(_ratio(inter, union))


def _ratio(inter, union) -> np.ndarray:
    """float32 inter / union (NaN for 0 / 0), as torch's int32 / int32 true division."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(inter, dtype=np.float32) / np.asarray(union, dtype=np.float32)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (torchvision.ops.nms rule): indices int64 of kept boxes, best score first.

    boxes [N, 4] x0,y0,x1,y1; a box is dropped when its IoU with a kept, higher-scoring box
    is > iou_threshold. Ties in score keep input order.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= _iou_one(boxes[i], areas[i], boxes, areas) > np.float32(iou_threshold)
    return np.asarray(keep, dtype=np.int64)


def _iou_one(box: np.ndarray, area: np.float32, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """IoU float32 [N] of one box with every box (NaN for two zero-area boxes)."""
    w = np.maximum(np.float32(0), np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    h = np.maximum(np.float32(0), np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area + areas - inter)


# ---------------------------------------------------------------- small regions (SAM's cv2 step, in numpy)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes (mode "holes") or drop small islands (mode "islands") of bool [H, W].

    8-connected components, as segment-anything's ``remove_small_regions``: regions with
    area < area_thresh change; in "islands" mode the largest island stays if all are small.
    Returns (new mask, changed).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    working = ~mask if mode == "holes" else mask
    runs, labels, sizes = _components(working)
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if mode == "holes":
        flip = small
    else:
        flip = small if not small.all() else np.arange(len(sizes)) != int(np.argmax(sizes))
    return _flip_runs(mask, runs, flip[labels]), True


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of bool [H, W] as row runs.

    Returns runs [R, 3] (row, start, end exclusive), component index [R] (components in
    raster order of their first pixel) and component sizes [C] in pixels.
    """
    runs = _row_runs(mask)
    roots = _union_runs(len(runs), *_run_edges(runs, mask.shape[1]))
    uniq, labels = np.unique(roots, return_inverse=True)
    sizes = np.bincount(labels, weights=runs[:, 2] - runs[:, 1], minlength=len(uniq))
    return runs, labels, sizes


def _row_runs(mask: np.ndarray) -> np.ndarray:
    """Horizontal runs of True [R, 3] int64 (row, start, end exclusive) in raster order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    diff = np.diff(padded, axis=1)
    rows, starts = np.nonzero(diff == 1)
    _, ends = np.nonzero(diff == -1)
    return np.stack([rows, starts, ends], axis=1).astype(np.int64)


def _run_edges(runs: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of runs in consecutive rows that touch with 8-connectivity."""
    span = width + 2
    start_key = runs[:, 0] * span + runs[:, 1]
    end_key = runs[:, 0] * span + runs[:, 2]
    lo = np.searchsorted(end_key, (runs[:, 0] + 1) * span + runs[:, 1], side="left")
    hi = np.searchsorted(start_key, (runs[:, 0] + 1) * span + runs[:, 2], side="right")
    counts = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(len(runs)), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    b = lo[a] + np.arange(len(a)) - first
    return a, b


def _union_runs(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over ``count`` runs with edges (a, b): root [count] = smallest run index."""
    parent = list(range(count))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a.tolist(), b.tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(count)], dtype=np.int64)


def _flip_runs(mask: np.ndarray, runs: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Copy of ``mask`` with the pixels of the flagged runs inverted."""
    out = mask.copy()
    for row, start, end in runs[flip].tolist():
        out[row, start:end] = ~out[row, start:end]
    return out


# ---------------------------------------------------------------- the generator


@dataclass
class _Candidates:
    """Kept candidates so far: low-res logits, boxes xyxy (inclusive, px), predicted IoU, stability
    score, prompt point (px).

    No full-size mask is kept: a candidate's mask is upsampled again only if it survives NMS
    (``masks``), so memory stays at the prompt head's low-res outputs (``logits`` are views of them)
    and the RLE encoding is paid for the survivors only.
    """

    logits: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    ious: list = field(default_factory=list)
    stabilities: list = field(default_factory=list)
    points: list = field(default_factory=list)

    @classmethod
    def merge(cls, parts: list["_Candidates"]) -> "_Candidates":
        """The candidates of several parts, in the parts' order (the order NMS ties depend on)."""
        merged = cls()
        for part in parts:
            for name in ("logits", "boxes", "ious", "stabilities", "points"):
                getattr(merged, name).extend(getattr(part, name))
        return merged

    def masks(self, indices, image_hw, threshold: float, offset: float) -> MaskSet:
        """The masks (upsampled logits > ``threshold``) of candidates ``indices``, in that order. The
        stability scores the filter did not need (None until here) are computed on the way, from the
        same upsampled logits (``offset``: the stability score's)."""
        if not len(indices):
            return MaskSet.empty(image_hw)
        buffers = _Buffers(image_hw)
        columns = np.empty((len(indices),) + buffers.mask.shape, bool)
        for row, i in enumerate(indices):
            up = upsample(self.logits[i], buffers.hw, out=buffers.logits)
            if self.stabilities[i] is None:
                self.stabilities[i] = _stability(up, threshold, offset, buffers.mask)
            np.greater(up, np.float32(threshold), out=columns[row])
        return MaskSet(columns, image_hw)


def merge_candidates(parts: list[_Candidates]) -> _Candidates:
    """Candidates collected in parts (``AutomaticMaskGenerator.collect``), merged in the parts' order."""
    return _Candidates.merge(parts)


class AutomaticMaskGenerator:
    """Segment everything in one image with grid point prompts (see the module docstring)."""

    def __init__(self, config: AmgConfig = AmgConfig()):
        self.config = config

    def generate(self, run_prompt_batch: PromptFn, orig_hw: tuple[int, int], size: int) -> list[dict]:
        """Masks of the whole image, best predicted IoU first.

        run_prompt_batch: the prompt head on this image's embeddings (see ``PromptFn``);
        orig_hw: (H, W) of the original image; size: the model's square input side.
        Returns records {"segmentation": bool [H, W], "rle": COCO counts bytes, "area": int,
        "bbox": [x, y, w, h], "box_xyxy": [x0, y0, x1, y1], "predicted_iou", "score" (same
        value), "stability_score", "point_coords": [[x, y]] px of the original image}.
        """
        batches = self.prompt_batches(orig_hw, size)
        outputs = [run_prompt_batch(model_points, labels) for _, model_points, labels in batches]
        return self.records(batches, outputs, orig_hw)

    def records(self, batches: list, outputs: list, orig_hw) -> list[dict]:
        """``generate``'s records from the prompt-head outputs of ``prompt_batches``."""
        found = self.collect(batches, outputs, orig_hw)
        order = self.ranking(found).tolist()
        masks = found.masks(order, orig_hw, self.config.mask_threshold, self.config.stability_score_offset)
        records = [
            _make_record(dense, rle, found.boxes[i], float(found.ious[i]), found.stabilities[i], found.points[i])
            for i, dense, rle in zip(order, masks.dense(), masks.rle())
        ]
        if self.config.min_mask_region_area > 0:
            records = self._clean_small_regions(records)
        return records

    def prompt_batches(self, orig_hw: tuple[int, int], size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The grid prompts in batches: [(points [P,2] px of the original image, the same in the
        model frame [P,1,2] float32, labels [P,1] int64 all 1)]."""
        h, w = orig_hw
        points = point_grid(self.config.points_per_side) * np.array([w, h], dtype=np.float32)
        model_points = scale_points(points, orig_hw, size)
        return [
            (points[sl], model_points[sl][:, None, :], np.ones((sl.stop - sl.start, 1), dtype=np.int64))
            for sl in batch_slices(len(points), self.config.points_per_batch)
        ]

    def collect(self, batches: list, outputs: list, orig_hw) -> "_Candidates":
        """The candidates of every batch's prompt-head outputs (pred_masks, iou) that pass the filters."""
        found = _Candidates()
        for (points, _, _), (pred_masks, iou) in zip(batches, outputs):
            self._add_batch(found, np.asarray(pred_masks, np.float32), np.asarray(iou, np.float32), points, orig_hw)
        return found

    def ranking(self, found: "_Candidates") -> np.ndarray:
        """Indices of the candidates that survive box NMS, best predicted IoU first."""
        return box_nms(
            np.array(found.boxes, np.float32).reshape(-1, 4),
            np.array(found.ious, np.float32),
            self.config.box_nms_thresh,
        )

    def generate_rle(self, batches: list, outputs: list, orig_hw, found: _Candidates | None = None) -> dict:
        """Like ``generate`` from precomputed prompt-head outputs, without dense records: {"masks": MaskSet
        (column-major, RLE-encoded on demand), "boxes" float32 [D,4] xyxy, "iou" float32 [D], "stability"
        float32 [D]}, best IoU first. ``found``: the candidates already collected from them (e.g. in
        parallel parts, then merged). Only the D survivors of NMS are upsampled again and kept."""
        if self.config.min_mask_region_area > 0:  # the cleanup needs dense masks: go through the records
            records = self.records(batches, outputs, orig_hw)
            masks = MaskSet.from_rle([r["rle"] for r in records], orig_hw)
            rows = [(r["box_xyxy"], r["predicted_iou"], r["stability_score"]) for r in records]
        else:
            found = found if found is not None else self.collect(batches, outputs, orig_hw)
            order = self.ranking(found).tolist()
            masks = found.masks(order, orig_hw, self.config.mask_threshold, self.config.stability_score_offset)
            rows = [(found.boxes[i], found.ious[i], found.stabilities[i]) for i in order]
        boxes, ious, stabilities = zip(*rows) if rows else ((), (), ())
        return {
            "masks": masks,
            "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "iou": np.array(ious, np.float32),
            "stability": np.array(stabilities, np.float32),
        }

    def _add_batch(self, found: _Candidates, pred_masks, iou, points, orig_hw) -> None:
        """Filter one batch's candidates [P, C, m, m] / [P, C] and store the survivors (their low-res logits)."""
        cfg = self.config
        p, c = iou.shape
        logits = pred_masks.reshape((p * c,) + pred_masks.shape[-2:])
        flat_iou = iou.reshape(-1)
        keep = np.arange(p * c)
        if cfg.pred_iou_thresh > 0:
            keep = np.flatnonzero(flat_iou > np.float32(cfg.pred_iou_thresh))
        buffers, filtering = _Buffers(orig_hw), cfg.stability_score_thresh > 0
        for k in keep.tolist():
            stab = self._binarize(logits[k], buffers, filtering)
            if not filtering or stab > cfg.stability_score_thresh:
                found.logits.append(logits[k])
                found.boxes.append(box_of_columns(buffers.mask))
                found.ious.append(flat_iou[k])
                found.stabilities.append(stab)
                found.points.append(points[k // c].tolist())

    def _binarize(self, logit: np.ndarray, buffers: "_Buffers", stability: bool) -> float | None:
        """Upsample one candidate [m, m] (logits) into ``buffers.logits`` [W, H], binarize it into
        ``buffers.mask`` (bool, column-major); return its stability score, or None without ``stability``
        (no filter needs it: transformers' ``filter_masks`` skips it too, and only NMS survivors get one,
        in ``_Candidates.masks``)."""
        cfg = self.config
        up = upsample(logit, buffers.hw, out=buffers.logits)
        stab = _stability(up, cfg.mask_threshold, cfg.stability_score_offset, buffers.mask) if stability else None
        np.greater(up, np.float32(cfg.mask_threshold), out=buffers.mask)
        return stab

    def _clean_small_regions(self, records: list[dict]) -> list[dict]:
        """SAM's postprocess_small_regions: fill holes, drop islands, re-run NMS (unchanged first)."""
        area = self.config.min_mask_region_area
        masks, unchanged = [], []
        for rec in records:
            mask, holes = remove_small_regions(rec["segmentation"], area, "holes")
            mask, islands = remove_small_regions(mask, area, "islands")
            masks.append(mask)
            unchanged.append(not (holes or islands))
        boxes = masks_to_boxes_xyxy(np.stack(masks)) if masks else np.zeros((0, 4), np.float32)
        keep = box_nms(boxes, np.array(unchanged, dtype=np.float32), self.config.box_nms_thresh)
        return [records[i] if unchanged[i] else _remade(records[i], masks[i]) for i in sorted(keep.tolist())]


class _Buffers:
    """Reused per-candidate buffers of one (H, W) image: upsampled logits float32 [W, H] and the
    binarized mask bool [W, H], both column-major."""

    def __init__(self, image_hw):
        self.hw = tuple(int(v) for v in image_hw)
        h, w = self.hw
        self.logits, self.mask = np.empty((w, h), np.float32), np.empty((w, h), bool)


def _make_record(mask: np.ndarray, rle: bytes, box: np.ndarray, iou: float, stab: float, point: list) -> dict:
    """Output record of one mask (see AutomaticMaskGenerator.generate); box: its inclusive xyxy box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return {
        "segmentation": mask,
        "rle": rle,
        "area": int(np.count_nonzero(mask)),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "box_xyxy": [x0, y0, x1, y1],
        "predicted_iou": iou,
        "score": iou,
        "stability_score": stab,
        "point_coords": [point],
    }


def _remade(record: dict, mask: np.ndarray) -> dict:
    """Record with a cleaned mask (new RLE, area and boxes; scores kept)."""
    return _make_record(
        mask,
        encode_rle(mask[None])[0],
        masks_to_boxes_xyxy(mask),
        record["predicted_iou"],
        record["stability_score"],
        record["point_coords"][0],
    )
