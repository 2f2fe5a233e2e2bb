"""Typed request tensors of the `sam3` model → a validated :class:`Sam3Request`.

Input names/dtypes are declared once in export/spec.py (SAM3_INPUTS). Everything that can be
checked without decoding the image is checked here; coordinates are checked against the
image size in pipeline.py. Every problem raises InputError with a message for the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from errors import InputError

MODES = ("text", "point", "box", "auto")
MASK_FORMATS = ("rle", "bool")


@dataclass(frozen=True)
class Limits:
    """Per-request limits (from the model config parameters)."""

    max_concepts: int = 16
    max_points: int = 13
    max_boxes: int = 64
    max_exemplars: int = 8
    max_points_per_side: int = 64


@dataclass
class Sam3Request:
    """One validated request. Coordinates are px of the original image (checked later)."""

    image: bytes
    mode: str = "text"
    texts: list[str] = field(default_factory=list)
    points: np.ndarray | None = None        # float32 [N, 2] x, y
    point_labels: np.ndarray | None = None  # int64 [N]
    boxes: np.ndarray | None = None         # float32 [K, 4] x0, y0, x1, y1
    box_labels: np.ndarray | None = None    # int64 [K]
    image_id: str | None = None
    threshold: float = 0.5
    mask_threshold: float = 0.5
    points_per_side: int = 16
    points_per_batch: int = 64
    mask_format: str = "rle"
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95


def _string(values: np.ndarray | None, name: str) -> str | None:
    """First element of a BYTES tensor decoded as UTF-8 (None when absent)."""
    if values is None or values.size == 0:
        return None
    item = values.reshape(-1)[0]
    try:
        return item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError as err:
        raise InputError(f"{name} must be UTF-8 text") from err


def _strings(values: np.ndarray | None, name: str) -> list[str]:
    if values is None:
        return []
    return [_string(np.array([v], dtype=object), name) for v in values.reshape(-1)]


def _scalar(values: np.ndarray | None, name: str, default, kind, low, high):
    """One number in [low, high] (default when absent)."""
    if values is None or values.size == 0:
        return default
    value = kind(values.reshape(-1)[0])
    if not np.isfinite(value) or not low <= value <= high:
        raise InputError(f"{name} must be a number in [{low}, {high}]; got {value}")
    return value


def _choice(values: np.ndarray | None, name: str, choices: tuple, default: str) -> str:
    value = _string(values, name) or default
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
    return value


def parse_request(tensors: dict[str, np.ndarray], limits: Limits = Limits()) -> Sam3Request:
    """Validate the tensors of one request (name → numpy array; absent optional inputs omitted)."""
    image_id = _string(tensors.get("image_id"), "image_id")
    req = Sam3Request(
        image=_image(tensors.get("image"), image_id), mode=_choice(tensors.get("mode"), "mode", MODES, "text"),
        texts=_strings(tensors.get("text"), "text"), image_id=image_id,
        threshold=_scalar(tensors.get("threshold"), "threshold", 0.5, float, 0.0, 1.0),
        mask_threshold=_scalar(tensors.get("mask_threshold"), "mask_threshold", 0.5, float, 0.0, 1.0),
        points_per_side=_scalar(tensors.get("points_per_side"), "points_per_side", 16, int, 1, limits.max_points_per_side),
        points_per_batch=_scalar(tensors.get("points_per_batch"), "points_per_batch", 64, int, 1, 1024),
        pred_iou_thresh=_scalar(tensors.get("pred_iou_thresh"), "pred_iou_thresh", 0.88, float, 0.0, 1.0),
        stability_score_thresh=_scalar(tensors.get("stability_score_thresh"), "stability_score_thresh", 0.95, float, 0.0, 1.0),
        mask_format=_choice(tensors.get("mask_format"), "mask_format", MASK_FORMATS, "rle"))
    _attach_prompts(req, tensors, limits)
    return req


def _image(values: np.ndarray | None, image_id: str | None) -> bytes:
    """The encoded image bytes; b"" only when an image_id may name a cached embedding."""
    data = None if values is None or values.size == 0 else values.reshape(-1)[0]
    if isinstance(data, bytes) and data:
        return data
    if image_id:
        return b""
    raise InputError("image is required: send the encoded image file bytes (JPEG, PNG or WebP), "
                     "or an image_id of an image sent before")


def _attach_prompts(req: Sam3Request, tensors: dict, limits: Limits) -> None:
    """Points/boxes with their labels, and the per-mode requirements and limits."""
    req.points, req.point_labels = _pair(tensors, "points", "point_labels", 2, default_label=1)
    req.boxes, req.box_labels = _pair(tensors, "boxes", "box_labels", 4, default_label=1)
    _check_mode_needs(req, limits)


def _pair(tensors, coords_name, labels_name, width, default_label):
    coords = tensors.get(coords_name)
    if coords is None or coords.size == 0:
        return None, None
    coords = np.asarray(coords, dtype=np.float32).reshape(-1, width)
    labels = tensors.get(labels_name)
    labels = np.full(len(coords), default_label, np.int64) if labels is None else np.asarray(labels).reshape(-1)
    return coords, labels


def _check_mode_needs(req: Sam3Request, limits: Limits) -> None:
    n_points = 0 if req.points is None else len(req.points)
    n_boxes = 0 if req.boxes is None else len(req.boxes)
    if req.mode == "text":
        if not req.texts and not n_boxes:
            raise InputError("text mode needs `text` (one or more concepts) or exemplar `boxes`")
        _at_most(len(req.texts), limits.max_concepts, "text concepts")
        _at_most(n_boxes, limits.max_exemplars, "exemplar boxes")
    elif req.mode == "point" and not n_points:
        raise InputError("point mode needs `points` ([[x, y], ...] px) and `point_labels` (1 fg / 0 bg)")
    elif req.mode == "box" and not n_boxes:
        raise InputError("box mode needs `boxes` ([[x0, y0, x1, y1], ...] px)")
    _at_most(n_points, limits.max_points, "points")
    if req.mode == "box":
        _at_most(n_boxes, limits.max_boxes, "boxes")


def _at_most(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise InputError(f"too many {what}: {count} (at most {limit} per request)")
