"""The result of one `sam3` request: :class:`Segmentation` (numpy arrays + COCO RLE masks).

Output names and dtypes come from ``sam3_spec.SAM3_OUTPUTS``. Coordinates are pixels of the
original image (x to the right, y down); boxes are ``x0, y0, x1, y1``. Masks travel as COCO
compressed RLE (pycocotools) and are decoded lazily; with ``mask_format="bool"`` the server
sends boolean masks instead and ``masks_rle`` is empty (``rle(i)`` still works: it encodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from sam3_spec import NP_DTYPES, SAM3_OUTPUTS

OUTPUT_SPECS = {t.name: t for t in SAM3_OUTPUTS}


@dataclass
class Segmentation:
    """Detections of one image; every per-detection array has D rows.

    image_shape: (height, width) px of the original image.
    boxes: float32 [D, 4] x0, y0, x1, y1 px (text-mode boxes are the model's, not clipped).
    scores: float32 [D] detection score (text) or chosen mask's predicted IoU (point/box/auto).
    labels: int32 [D] concept index into ``concepts`` (text) or prompt object index (point/box).
    iou_scores: float32 [D, C] all candidate IoU scores (C = 3 for point/box, 0 for text).
    stability_scores: float32 [D] (auto mode; 0 otherwise).
    masks_rle: D COCO compressed RLE ``counts`` (bytes) of size image_shape; empty when the
        request asked for ``mask_format="bool"``.
    concepts: the text concepts of the request (label names); [] outside text mode.
    mode: the request mode ("text", "point", "box" or "auto").
    """

    image_shape: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    iou_scores: np.ndarray
    stability_scores: np.ndarray
    masks_rle: list[bytes]
    concepts: list[str] = field(default_factory=list)
    mode: str = ""
    _masks: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def masks(self) -> np.ndarray:
        """bool [D, H, W] masks (decoded from RLE on first access, then cached)."""
        if self._masks is None:
            h, w = self.image_shape
            decoded = [self._decode(i) for i in range(len(self))]
            self._masks = np.stack(decoded) if decoded else np.zeros((0, h, w), bool)
        return self._masks

    def mask(self, i: int) -> np.ndarray:
        """bool [H, W] mask of detection ``i`` (decodes only this one unless all are cached)."""
        return self._masks[i] if self._masks is not None else self._decode(i)

    def rle(self, i: int) -> dict:
        """COCO RLE of detection ``i``: ``{"size": [h, w], "counts": str}``."""
        if i < len(self.masks_rle):
            return {"size": list(self.image_shape), "counts": self.masks_rle[i].decode("ascii")}
        encoded = mask_utils.encode(np.asfortranarray(self.mask(i).astype(np.uint8)))
        return {"size": list(self.image_shape), "counts": encoded["counts"].decode("ascii")}

    def area(self, i: int) -> int:
        """Mask area of detection ``i`` in pixels."""
        if i < len(self.masks_rle):
            return int(mask_utils.area(self._coco_rle(i)))
        return int(self.mask(i).sum())

    def label_name(self, i: int) -> str:
        """Concept of detection ``i`` (text mode), else "object k" (point/box) or "mask" (auto)."""
        label = int(self.labels[i])
        if 0 <= label < len(self.concepts):
            return self.concepts[label]
        return "mask" if self.mode == "auto" else f"object {label}"

    def to_json(self, masks: str = "rle") -> dict:
        """JSON-ready dict: image_shape, mode, concepts, count, detections.

        Each detection: index, label (int), name, score, box [x0, y0, x1, y1] px, iou_scores,
        stability_score, area (px) and, with ``masks="rle"``, mask ({"size", "counts"}).
        ``masks="none"`` leaves the masks out.
        """
        if masks not in ("rle", "none"):
            raise ValueError(f"masks must be 'rle' or 'none'; got {masks!r}")
        detections = [self._detection_json(i, masks == "rle") for i in range(len(self))]
        return {
            "image_shape": list(self.image_shape),
            "mode": self.mode,
            "concepts": list(self.concepts),
            "count": len(self),
            "detections": detections,
        }

    def _detection_json(self, i: int, with_mask: bool) -> dict:
        item = {
            "index": i,
            "label": int(self.labels[i]),
            "name": self.label_name(i),
            "score": float(self.scores[i]),
            "box": [float(v) for v in self.boxes[i]],
            "iou_scores": [float(v) for v in self.iou_scores[i]],
            "stability_score": float(self.stability_scores[i]),
            "area": self.area(i),
        }
        if with_mask:
            item["mask"] = self.rle(i)
        return item

    def _coco_rle(self, i: int) -> dict:
        return {"size": list(self.image_shape), "counts": self.masks_rle[i]}

    def _decode(self, i: int) -> np.ndarray:
        if i >= len(self.masks_rle):
            raise IndexError(
                f"detection {i} has no mask: this result holds {len(self.masks_rle)} RLE masks "
                f"for {len(self)} detections"
            )
        return mask_utils.decode(self._coco_rle(i)).astype(bool)


def coerce_output(name: str, array: np.ndarray | None) -> np.ndarray:
    """Output ``name`` with the dtype of SAM3_OUTPUTS (tritonclient gives float64 for empty tensors)."""
    spec = OUTPUT_SPECS[name]
    if array is None:
        raise ValueError(f"the server's response has no output {name!r}: is the model `sam3` of this project?")
    return np.asarray(array).astype(NP_DTYPES[spec.dtype], copy=False)


def segmentation_from_outputs(outputs: dict[str, np.ndarray | None], concepts: list[str], mode: str) -> Segmentation:
    """Build a :class:`Segmentation` from the raw output tensors of one response (name → array)."""
    arr = {name: coerce_output(name, outputs.get(name)) for name in OUTPUT_SPECS}
    count, masks = len(arr["scores"]), arr["masks"]
    return Segmentation(
        image_shape=(int(arr["image_shape"][0]), int(arr["image_shape"][1])),
        boxes=arr["boxes"].reshape(-1, 4),
        scores=arr["scores"],
        labels=arr["labels"],
        iou_scores=arr["iou_scores"],
        stability_scores=arr["stability_scores"],
        masks_rle=[bytes(c) for c in arr["masks_rle"].reshape(-1)],
        concepts=list(concepts),
        mode=mode,
        _masks=masks if count and len(masks) == count else None,
    )
