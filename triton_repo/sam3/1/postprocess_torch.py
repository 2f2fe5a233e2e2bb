"""GPU post-processing (target ``gpu``): the same interface and results as postprocess.py, in torch.

Component outputs arrive as CUDA tensors (BLS + DLPack); scores, thresholds, the gather of the
kept queries for the mask head, bilinear mask upsampling, binarization and the search for RLE
run boundaries run on the device; only the kept masks' run boundaries (and their scores and
boxes) are copied to the host, where pycocotools compresses them. Functions accept
tensors on any device, so the CPU test suite checks them against the numpy implementation
(transformers' own post-processing uses these same torch calls).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from postprocess import MaskSet, clip_boxes
from pycocotools import mask as mask_utils


def _host(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu").numpy()


def as_tensor(x, device=None) -> torch.Tensor:
    """A numpy array or tensor as a tensor on ``device`` (default: where it is, or the CPU)."""
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device or "cpu")


def upsample_binarize(x: torch.Tensor, image_hw, threshold: float) -> MaskSet:
    """[K, m, m] float → MaskSet of the bilinear upsampling (align_corners=False) > threshold.

    The maps are upsampled transposed, so the host copy is already column-major (RLE layout).
    """
    h, w = (int(v) for v in image_hw)
    if x.shape[0] == 0:
        return MaskSet.empty(image_hw)
    up = F.interpolate(x.transpose(-1, -2)[:, None].float(), size=(w, h), mode="bilinear", align_corners=False)
    return MaskSet.from_rle(rle_of_columns(up[:, 0] > threshold), image_hw)


def rle_of_columns(columns: torch.Tensor) -> list[bytes]:
    """COCO compressed RLE ``counts`` (pycocotools' bytes) of bool [K, W, H] column-major masks of (H, W) images.

    The runs' boundaries are found where the masks live; on a GPU only their positions (int32)
    and the first pixel of each mask reach the host, not K·H·W mask bytes (2 MB a 1080p mask).
    pycocotools compresses the run lengths on the host.
    """
    k, w, h = columns.shape
    n = w * h
    if k == 0:
        return []
    flat = columns.reshape(k, n)
    rows, starts = torch.nonzero(flat[:, 1:] != flat[:, :-1], as_tuple=True)
    packed = _host(torch.cat([torch.bincount(rows, minlength=k), flat[:, 0], starts + 1]).int())  # one copy
    per_mask, first = packed[:k], packed[k : 2 * k]
    starts = np.split(packed[2 * k :], np.cumsum(per_mask)[:-1])
    runs = [_run_lengths(s, n, bool(on)) for s, on in zip(starts, first)]
    return [r["counts"] for r in mask_utils.frPyObjects([{"size": [h, w], "counts": c} for c in runs], h, w)]


def _run_lengths(starts: np.ndarray, n: int, first_on: bool) -> np.ndarray:
    """uint32 COCO run lengths (zeros first) of an n-pixel mask whose runs start at ``starts``."""
    runs = np.diff(np.concatenate(([0], starts, [n]))).astype(np.uint32)
    return np.concatenate((np.zeros(1, np.uint32), runs)) if first_on else runs


def select_queries(logits, presence, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Same contract as postprocess.select_queries; logits/presence may be CUDA tensors."""
    scores = as_tensor(logits).sigmoid() * as_tensor(presence).sigmoid()
    keep = [torch.nonzero(row > threshold).flatten() for row in scores]
    return [(_host(k), _host(row[k])) for k, row in zip(keep, scores)]


def gather_queries(queries, memory, kept: list[np.ndarray]):
    """Same contract as postprocess.gather_queries; the gathered tensors stay on the device."""
    queries, memory = as_tensor(queries), as_tensor(memory)
    rows = np.array([n for n, k in enumerate(kept) if len(k)], np.int64)
    width = max((len(k) for k in kept), default=0)
    padded = torch.zeros((len(rows), width, queries.shape[-1]), dtype=queries.dtype, device=queries.device)
    for r, n in enumerate(rows):
        padded[r, : len(kept[n])] = queries[n, torch.as_tensor(kept[n], device=queries.device)]
    return rows, memory[torch.as_tensor(rows, device=memory.device)].contiguous(), padded


def concept_masks(pred_masks, counts: list[int], image_hw, mask_threshold: float) -> list[MaskSet]:
    """Same contract as postprocess.concept_masks, upsampled on the device."""
    pred_masks = as_tensor(pred_masks)
    return [upsample_binarize(pred_masks[r, :n].sigmoid(), image_hw, mask_threshold) for r, n in enumerate(counts)]


def scale_boxes(boxes_xyxy_norm, indices: np.ndarray, image_hw) -> np.ndarray:
    """Same contract as postprocess.scale_boxes (only the kept boxes leave the device)."""
    boxes = as_tensor(boxes_xyxy_norm)
    kept = _host(boxes[torch.as_tensor(indices, device=boxes.device)]).astype(np.float32)
    h, w = image_hw
    return clip_boxes(kept * np.array([w, h, w, h], np.float32), image_hw)


def best_prompt_masks(outputs: list[dict], image_hw, logit_threshold: float):
    """Best candidate per object, upsampled and binarized on the device.

    outputs: prompt-call results with pred_masks [P,C,m,m] and iou_scores [P,C] (chunks are
    concatenated). Returns (MaskSet of P masks, iou float32 [P,C] numpy).
    """
    logits = torch.cat([as_tensor(o["pred_masks"]) for o in outputs])
    iou = torch.cat([as_tensor(o["iou_scores"], logits.device) for o in outputs]).float()
    best = iou.argmax(-1)
    chosen = logits[torch.arange(len(best), device=logits.device), best]
    return upsample_binarize(chosen, image_hw, logit_threshold), _host(iou)
