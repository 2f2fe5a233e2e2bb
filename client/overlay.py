"""Draw a :class:`~client.results.Segmentation` over its image: translucent masks, boxes, labels, prompts.

Colors cycle through a fixed palette by detection index. Label text is "<name> <score>"
(e.g. "person 0.87") in PIL's default font, on a box of the detection's color. Boxes are
clipped to the image for drawing (text-mode boxes may reach outside it).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from client.results import Segmentation

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)
POINT_COLORS = {1: (0, 255, 0), 0: (255, 0, 0)}  # foreground / background clicks


def color(i: int) -> tuple[int, int, int]:
    """RGB color of detection ``i``."""
    return PALETTE[i % len(PALETTE)]


def draw_overlay(
    image_rgb: np.ndarray,
    seg: Segmentation,
    concepts=None,
    *,
    points=None,
    point_labels=None,
    prompt_boxes=None,
    alpha: float = 0.45,
) -> Image.Image:
    """RGB image with the detections of ``seg`` drawn over ``image_rgb`` (uint8 [H, W, 3], H, W = seg.image_shape).

    concepts: label names overriding ``seg.concepts``. points [N, 2] x, y px with point_labels
    [N] (1 fg green, 0 bg red) and prompt_boxes [K, 4] x0, y0, x1, y1 px (white) show the prompts.
    alpha: mask opacity in [0, 1].
    """
    image_rgb = _checked_image(image_rgb, seg)
    out = Image.fromarray(blend_masks(image_rgb, seg, alpha))
    draw, font = ImageDraw.Draw(out), _font(out.size)
    names = list(concepts) if concepts is not None else None
    for i in range(len(seg)):
        _draw_detection(draw, seg, i, _label_text(seg, i, names), font, out.size)
    _draw_prompt_boxes(draw, prompt_boxes, out.size)
    _draw_points(draw, points, point_labels, out.size)
    return out


def blend_masks(image_rgb: np.ndarray, seg: Segmentation, alpha: float) -> np.ndarray:
    """uint8 [H, W, 3]: each mask's pixels mixed with its color at opacity ``alpha``."""
    out = image_rgb.astype(np.float32)
    for i in range(len(seg)):
        mask = seg.mask(i)
        out[mask] = out[mask] * (1 - alpha) + np.float32(color(i)) * alpha
    return out.round().clip(0, 255).astype(np.uint8)


def _checked_image(image_rgb: np.ndarray, seg: Segmentation) -> np.ndarray:
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image_rgb must be uint8 [H, W, 3]; got {image_rgb.dtype} {image_rgb.shape}")
    if tuple(image_rgb.shape[:2]) != tuple(seg.image_shape):
        raise ValueError(
            f"image is {image_rgb.shape[:2]} (h, w) but the segmentation is of a "
            f"{tuple(seg.image_shape)} image: draw over the image that was segmented"
        )
    return image_rgb


def _font(size_wh: tuple[int, int]):
    """PIL's default font scaled to the image (about 1/40 of its short side, at least 11 px)."""
    return ImageFont.load_default(size=max(11, min(size_wh) // 40))


def _label_text(seg: Segmentation, i: int, names: list[str] | None) -> str:
    label = int(seg.labels[i])
    name = names[label] if names is not None and 0 <= label < len(names) else seg.label_name(i)
    return f"{name} {float(seg.scores[i]):.2f}"


def _clipped_box(box, size_wh: tuple[int, int]) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 clipped to the image (w, h)."""
    w, h = size_wh
    x0, y0, x1, y1 = (float(v) for v in box)
    return min(max(x0, 0), w - 1), min(max(y0, 0), h - 1), min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)


def _line_width(size_wh: tuple[int, int]) -> int:
    return max(2, min(size_wh) // 256)


def _draw_detection(
    draw: ImageDraw.ImageDraw, seg: Segmentation, i: int, text: str, font, size: tuple[int, int]
) -> None:
    """Box outline of detection ``i`` and its label on a filled tag above (or inside) the box."""
    x0, y0, x1, y1 = _clipped_box(seg.boxes[i], size)
    draw.rectangle((x0, y0, x1, y1), outline=color(i), width=_line_width(size))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 4
    tx, ty = min(x0, max(size[0] - tw, 0)), (y0 - th if y0 >= th else y0)
    draw.rectangle((tx, ty, tx + tw, ty + th), fill=color(i))
    draw.text((tx + 2 - left, ty + 2 - top), text, fill=_text_color(color(i)), font=font)


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones."""
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else (255, 255, 255)


def _draw_prompt_boxes(draw: ImageDraw.ImageDraw, boxes, size_wh: tuple[int, int]) -> None:
    """Prompt boxes [K, 4] px as white outlines with a black edge."""
    if boxes is None:
        return
    width = _line_width(size_wh)
    for box in np.asarray(boxes, np.float32).reshape(-1, 4):
        xy = _clipped_box(box, size_wh)
        draw.rectangle(xy, outline=(0, 0, 0), width=width + 2)
        draw.rectangle(xy, outline=(255, 255, 255), width=width)


def _draw_points(draw: ImageDraw.ImageDraw, points, labels, size_wh: tuple[int, int]) -> None:
    """Clicks [N, 2] px as dots: green foreground (label 1), red background (label 0)."""
    if points is None:
        return
    points = np.asarray(points, np.float32).reshape(-1, 2)
    labels = np.ones(len(points), int) if labels is None else np.asarray(labels).reshape(-1)
    radius = max(4, min(size_wh) // 100)
    for (x, y), label in zip(points, labels):
        fill = POINT_COLORS.get(int(label), (255, 255, 0))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=(255, 255, 255), width=2)
