"""GPU post-processing (target ``gpu``): the same results as postprocess.py, computed in torch.

Component outputs arrive as CUDA tensors (BLS + DLPack); scores, thresholds, bilinear mask
upsampling and binarization run on the device and only the kept masks are copied to the
host. Functions accept tensors on any device, so the CPU test suite checks them against
the numpy implementation (transformers' own post-processing uses these same torch calls).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _host(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu").numpy()


def as_tensor(x, device) -> torch.Tensor:
    """A numpy array or tensor as a tensor on ``device``."""
    return x.to(device) if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)).to(device)


def upsample_binarize(x: torch.Tensor, out_hw, threshold: float) -> torch.Tensor:
    """[K, m, m] float → bool [K, H, W]: bilinear (align_corners=False) then > threshold."""
    if x.shape[0] == 0:
        return torch.zeros((0, *out_hw), dtype=torch.bool, device=x.device)
    return F.interpolate(x[:, None].float(), size=tuple(out_hw), mode="bilinear", align_corners=False)[:, 0] > threshold


def concept_detections(logits, presence, boxes_xyxy_norm, masks, orig_hw, threshold: float, mask_threshold: float):
    """Same contract as postprocess.concept_detections; inputs may be CUDA tensors."""
    device = masks.device if isinstance(masks, torch.Tensor) else "cpu"
    logits, presence, boxes, masks = (as_tensor(v, device) for v in (logits, presence, boxes_xyxy_norm, masks))
    h, w = orig_hw
    scores = logits.sigmoid() * presence.sigmoid()
    scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=device)
    results = []
    for n in range(scores.shape[0]):
        keep = torch.nonzero(scores[n] > threshold).flatten()
        kept = upsample_binarize(masks[n, keep].sigmoid(), orig_hw, mask_threshold)
        results.append((_host(scores[n, keep]), _host(boxes[n, keep] * scale), _host(kept)))
    return results


def best_prompt_masks(outputs: list[dict], orig_hw, logit_threshold: float):
    """Best candidate per object, upsampled and binarized on the device.

    outputs: prompt-call results with pred_masks [P,C,m,m] and iou_scores [P,C] (chunks are
    concatenated). Returns (masks bool [P,H,W], iou float32 [P,C]) as numpy.
    """
    device = outputs[0]["pred_masks"].device if isinstance(outputs[0]["pred_masks"], torch.Tensor) else "cpu"
    logits = torch.cat([as_tensor(o["pred_masks"], device) for o in outputs])
    iou = torch.cat([as_tensor(o["iou_scores"], device) for o in outputs]).float()
    best = iou.argmax(-1)
    chosen = logits[torch.arange(len(best), device=device), best]
    return _host(upsample_binarize(chosen, orig_hw, logit_threshold)), _host(iou)
