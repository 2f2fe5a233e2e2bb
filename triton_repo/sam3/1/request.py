"""Typed request tensors of the `sam3` model → a validated :class:`Sam3Request`.

Input names, dtypes, defaults, bounds and choices are declared once in sam3_spec.py
(SAM3_INPUTS; ``sam3_spec`` here). Everything that can be checked without decoding the image is
checked here; coordinates are checked against the image size in pipeline.py. Every problem
raises InputError with a message for the user. An empty tensor counts as left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from cache import content_key
from errors import InputError

from sam3_spec import SAM3_INPUTS

SPECS = {t.name: t for t in SAM3_INPUTS}


@dataclass(frozen=True)
class Limits:
    """Per-request limits on prompt counts (these defaults; the model config does not set them)."""

    max_concepts: int = 16
    max_points: int = 13
    max_boxes: int = 64
    max_exemplars: int = 8


@dataclass
class Sam3Request:
    """One validated request. Coordinates are px of the original image (checked later)."""

    image: bytes
    mode: str = SPECS["mode"].default
    texts: list[str] = field(default_factory=list)
    points: np.ndarray | None = None  # float32 [N, 2] x, y
    point_labels: np.ndarray | None = None  # int64 [N]
    boxes: np.ndarray | None = None  # float32 [K, 4] x0, y0, x1, y1
    box_labels: np.ndarray | None = None  # int64 [K]
    image_id: str | None = None
    threshold: float = SPECS["threshold"].default
    mask_threshold: float = SPECS["mask_threshold"].default
    points_per_side: int = SPECS["points_per_side"].default
    points_per_batch: int = SPECS["points_per_batch"].default
    mask_format: str = SPECS["mask_format"].default
    pred_iou_thresh: float = SPECS["pred_iou_thresh"].default
    stability_score_thresh: float = SPECS["stability_score_thresh"].default

    @cached_property
    def cache_key(self) -> str:
        """The image's key in the embedding cache: "id:" + ``image_id``, else a hash of the image bytes, computed
        once (BLAKE2b of a 2 MB JPEG: about 3 ms; the pipeline asks for the key at every step)."""
        return "id:" + self.image_id if self.image_id else content_key(self.image)


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


def _scalar(tensors: dict, name: str, kind):
    """One number in the spec's bounds of ``name`` (its default when absent)."""
    values, spec = tensors.get(name), SPECS[name]
    if values is None or values.size == 0:
        return spec.default
    value = kind(values.reshape(-1)[0])
    low, high = spec.bounds
    if not np.isfinite(value) or not low <= value <= high:
        raise InputError(f"{name} must be a number in [{low}, {high}]; got {value}")
    return value


def _choice(tensors: dict, name: str) -> str:
    """One of the spec's choices of ``name`` (its default when absent or empty)."""
    spec = SPECS[name]
    value = _string(tensors.get(name), name) or spec.default
    if value not in spec.choices:
        raise InputError(f"unknown {name} {value!r}: use one of {', '.join(spec.choices)}")
    return value


def parse_request(tensors: dict[str, np.ndarray], limits: Limits = Limits()) -> Sam3Request:
    """Validate the tensors of one request (name → numpy array; absent optional inputs omitted)."""
    image_id = _string(tensors.get("image_id"), "image_id") or None
    req = Sam3Request(
        image=_image(tensors.get("image"), image_id),
        mode=_choice(tensors, "mode"),
        texts=_strings(tensors.get("text"), "text"),
        image_id=image_id,
        threshold=_scalar(tensors, "threshold", float),
        mask_threshold=_scalar(tensors, "mask_threshold", float),
        points_per_side=_scalar(tensors, "points_per_side", int),
        points_per_batch=_scalar(tensors, "points_per_batch", int),
        pred_iou_thresh=_scalar(tensors, "pred_iou_thresh", float),
        stability_score_thresh=_scalar(tensors, "stability_score_thresh", float),
        mask_format=_choice(tensors, "mask_format"),
    )
    _attach_prompts(req, tensors, limits)
    return req


def _image(values: np.ndarray | None, image_id: str | None) -> bytes:
    """The encoded image bytes; b"" only when an image_id may name a cached embedding."""
    data = None if values is None or values.size == 0 else values.reshape(-1)[0]
    if isinstance(data, bytes) and data:
        return data
    if image_id:
        return b""
    raise InputError(
        "image is required: send the encoded image file bytes (JPEG, PNG or WebP), "
        "or an image_id of an image sent before"
    )


def _attach_prompts(req: Sam3Request, tensors: dict, limits: Limits) -> None:
    """Points/boxes with their labels, and the per-mode requirements and limits."""
    req.points, req.point_labels = _pair(tensors, "points", "point_labels", 2, default_label=1)
    req.boxes, req.box_labels = _pair(tensors, "boxes", "box_labels", 4, default_label=1)
    _check_mode_needs(req, limits)


def _pair(tensors, coords_name, labels_name, width, default_label):
    """(coords float32 [N, width], labels [N]) or (None, None); labels left out or empty → default_label."""
    coords = tensors.get(coords_name)
    if coords is None or coords.size == 0:
        return None, None
    coords = np.asarray(coords, dtype=np.float32).reshape(-1, width)
    labels = tensors.get(labels_name)
    if labels is None or labels.size == 0:
        return coords, np.full(len(coords), default_label, np.int64)
    return coords, np.asarray(labels).reshape(-1)


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
