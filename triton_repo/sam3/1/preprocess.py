"""Image decoding, model-frame resizing and prompt coordinates for the sam3 orchestrator.

numpy + Pillow (libspng through pyspng for plain 8-bit RGB PNGs where it is installed), and torch's
resize kernel where torch is installed. Conventions:
- images are HxWx3 uint8 RGB arrays (``orig_hw`` = (H, W) of the decoded, EXIF-rotated image);
- the model sees the image resized to ``size`` x ``size`` WITHOUT keeping the aspect ratio;
- points are (x, y) and boxes (x0, y0, x1, y1) in pixels; a pixel coordinate runs from 0 to
  W (x) or H (y), like transformers' processors.

``resize_for_model`` is the uint8 bilinear antialiased resize that transformers'
``Sam3ImageProcessor`` performs with torchvision (Pillow-SIMD style separable filter with
int16 fixed-point weights). Where torch is installed (every install that exports, and the GPU
images) it calls that same torch kernel, 8-15x faster than the numpy mirror it falls back to
otherwise; both give the same bytes. Pillow's own BILINEAR uses 22-bit weights and differs by up
to 2 levels on some pixels.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from errors import InputError
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import torch
except ImportError:  # a serve-only install without torch: resize_for_model uses the numpy mirror
    torch = None

try:
    import pyspng
except ImportError:  # a platform without its wheel: Pillow decodes every PNG
    pyspng = None

_MP = 1e6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# chunks that make a PNG more than plain pixels to decode_image: transparency, EXIF orientation, animation
PNG_SPECIAL_CHUNKS = frozenset({b"tRNS", b"eXIf", b"acTL"})


# ---------------------------------------------------------------- decoding


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, WebP, anything Pillow opens) to RGB; a plain 8-bit RGB PNG
    by libspng (``decode_plain_png``: the same bytes, twice as fast).

    EXIF orientation is applied; transparency is composited onto white (as transformers'
    ``convert_to_rgb``); 16-bit grayscale keeps its 8 most significant bits. The pixel count
    is checked from the header before any pixel is decoded.

    Returns: HxWx3 uint8 RGB (read-only array). Raises InputError for empty, undecodable, truncated or too
    large images (``max_pixels`` = H*W limit).
    """
    if not data:
        raise InputError("image is empty: send the bytes of an encoded image file (JPEG, PNG, WebP, ...)")
    image = _open(data, max_pixels)
    plain = decode_plain_png(data)
    if plain is not None:
        return plain
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy of a 6 MB frame when nothing turns
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"image could not be decoded ({exc}); send a complete, valid image file") from exc
    return to_rgb(image)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the size against ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InputError(f"image is too large to decode safely ({exc}); downscale it") from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"image bytes are not a decodable image ({len(data)} bytes of an unknown format); "
            "send a JPEG, PNG or WebP file"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(
            f"image bytes are not a decodable image ({len(data)} bytes; {exc}); send a JPEG, PNG or WebP file"
        ) from exc
    check_image_size(image.size, max_pixels)
    return image


def decode_plain_png(data: bytes) -> np.ndarray | None:
    """HxWx3 uint8 RGB (read-only) of a plain PNG (``is_plain_png``) decoded by libspng: the same bytes as
    Pillow in about half the time (the bench's 512² astronaut: 4.9 vs 9.6 ms), though it holds the GIL
    while it runs. None without pyspng, for any other image, or where libspng refuses the file (Pillow then
    decodes it or names what is wrong). Call after ``_open`` has checked the pixel count."""
    if pyspng is None or not is_plain_png(data):
        return None
    try:
        pixels = pyspng.load(data, "RGB")
    except RuntimeError:  # corrupt or truncated: Pillow's path raises the user's InputError
        return None
    pixels.flags.writeable = False
    return pixels


def is_plain_png(data: bytes) -> bool:
    """An 8-bit truecolour PNG (IHDR bit depth 8, colour type 2) without tRNS, eXIf or acTL chunks."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x02":
        return False
    return not png_chunk_types(data) & PNG_SPECIAL_CHUNKS


def png_chunk_types(data: bytes) -> set[bytes]:
    """Types of a PNG's chunks up to IEND (lengths read, bodies skipped: microseconds for any file)."""
    kinds, pos = set(), len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        kind = data[pos + 4 : pos + 8]
        kinds.add(kind)
        if kind == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return kinds


def check_image_size(size_wh: tuple[int, int], max_pixels: int) -> None:
    """Raise InputError if W*H is zero or over ``max_pixels``."""
    w, h = size_wh
    if w <= 0 or h <= 0:
        raise InputError(f"image is {w}x{h}: it has no pixels")
    if w * h > max_pixels:
        raise InputError(
            f"image is {w}x{h} = {w * h / _MP:.1f} MP, over the {max_pixels / _MP:.1f} MP limit; downscale it"
        )


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode → HxWx3 uint8 RGB (alpha composited onto white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # RGB: one copy, not two


# ---------------------------------------------------------------- resizing


def resize_for_model(image: np.ndarray, size: int) -> np.ndarray:
    """Resize HxWx3 uint8 RGB to the model input: uint8 [1, 3, size, size] NCHW.

    Bilinear with antialias, separable (horizontal pass, uint8 rounding, vertical pass) with
    the int16 fixed-point weights torch uses for uint8 tensors, so ((x/255)-0.5)/0.5 equals
    transformers' Sam3ImageProcessor pixel_values. torch's own kernel when torch is installed,
    else ``resize_numpy``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"resize_for_model expects HxWx3 uint8, got {image.shape} {image.dtype}")
    return resize_numpy(image, size) if torch is None else resize_torch(image, size)


def resize_torch(image: np.ndarray, size: int) -> np.ndarray:
    """``resize_for_model`` by torch's uint8 antialiased kernel (the call torchvision makes)."""
    hwc = torch.from_numpy(np.ascontiguousarray(image))  # read-only arrays (Pillow's) are shared, not copied
    nchw = hwc.permute(2, 0, 1)[None]  # a C-contiguous HxWx3 gives channels-last strides: torch's fast uint8 path
    out = torch.nn.functional.interpolate(nchw, size=(size, size), mode="bilinear", antialias=True)
    return np.ascontiguousarray(out.numpy())


def resize_numpy(image: np.ndarray, size: int) -> np.ndarray:
    """``resize_for_model`` in numpy: the same integer arithmetic as torch, about 10x slower."""
    h, w = image.shape[:2]
    out = np.ascontiguousarray(image.transpose(1, 0, 2))  # W, H, 3: passes gather along axis 0
    if w != size:
        out = _resample_axis0(out, size)
    out = np.ascontiguousarray(out.transpose(1, 0, 2))  # H, size, 3
    if h != size:
        out = _resample_axis0(out, size)
    return np.ascontiguousarray(out.transpose(2, 0, 1))[None]


def _resample_axis0(x: np.ndarray, out_size: int, chunk: int = 128) -> np.ndarray:
    """Antialiased bilinear resample of uint8 ``x`` along axis 0 to ``out_size`` rows.

    Integer arithmetic as torch: sum(pixel * w16) + 2**(precision-1), >> precision, clip
    to 0..255. Runs over ``chunk`` columns of axis 1 at a time to stay in cache.
    """
    idx, weights, precision = aa_weights_int16(x.shape[0], out_size)
    taps = [weights[:, k].reshape((out_size,) + (1,) * (x.ndim - 1)) for k in range(idx.shape[1])]
    out = np.empty((out_size,) + x.shape[1:], dtype=np.uint8)
    for start in range(0, x.shape[1], chunk):
        part = x[:, start : start + chunk]
        acc = np.full((out_size,) + part.shape[1:], 1 << (precision - 1), dtype=np.int32)
        for k, wk in enumerate(taps):
            acc += part[idx[:, k]] * wk  # uint8 * int32 -> int32
        np.right_shift(acc, precision, out=acc)
        out[:, start : start + chunk] = np.clip(acc, 0, 255)
    return out


def aa_weights_int16(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices [out, K] int64, int16-valued weights [out, K] int32 and their precision.

    Mirrors torch's ``_compute_index_ranges_int16_weights`` for bilinear antialias
    (align_corners=False): triangle filter stretched by the downscale factor, weights
    normalized per output pixel in float64, then rounded to ``precision`` fractional bits.
    """
    wf, xmin = _aa_weights_f64(in_size, out_size)
    precision = _weights_precision(float(wf.max()))
    w16 = np.floor(0.5 + wf * (1 << precision)).astype(np.int32)
    used = int(np.flatnonzero(w16.any(axis=0)).max()) + 1  # drop all-zero trailing taps
    idx = np.minimum(xmin[:, None] + np.arange(used)[None, :], in_size - 1)
    return idx, w16[:, :used], precision


def _aa_weights_f64(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float64 filter weights [out, K] and first source index [out]."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(math.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xsize = np.clip(np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin, 0, taps)
    w = np.zeros((out_size, taps), dtype=np.float64)
    total = np.zeros(out_size, dtype=np.float64)
    for j in range(taps):  # sequential sum, in torch's order
        wj = np.maximum(0.0, 1.0 - np.abs((j + xmin - center + 0.5) * invscale))
        w[:, j] = np.where(j < xsize, wj, 0.0)
        total += w[:, j]
    return np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w), xmin


def _weights_precision(w_max: float) -> int:
    """Fractional bits so that the largest weight still fits int16 (torch's loop)."""
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return precision


# ---------------------------------------------------------------- coordinates


def scale_points(points_xy: np.ndarray, orig_hw: tuple[int, int], size: int) -> np.ndarray:
    """Pixels in the original image → pixels in the size x size model frame.

    points_xy: [..., 2] (x, y). Returns float32 [..., 2]: x * (size / W), y * (size / H), no
    rounding (Sam3TrackerProcessor's input_points / input_boxes normalization). Boxes
    (x0, y0, x1, y1) go through as ``scale_points(boxes.reshape(-1, 2, 2), ...)``.
    """
    h, w = orig_hw
    out = np.array(points_xy, dtype=np.float32, copy=True)
    out[..., 0] *= np.float32(size / w)
    out[..., 1] *= np.float32(size / h)
    return out


def boxes_xyxy_to_cxcywh_norm(boxes: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """Exemplar boxes x0,y0,x1,y1 px [..., 4] → float32 cx,cy,w,h normalized to [0, 1] [..., 4].

    Same arithmetic as Sam3Processor's input_boxes: divide by W / H, then cxcywh.
    """
    h, w = orig_hw
    b = np.array(boxes, dtype=np.float32, copy=True)
    b[..., 0::2] /= np.float32(w)
    b[..., 1::2] /= np.float32(h)
    x0, y0, x1, y1 = (b[..., i] for i in range(4))
    return np.stack([(x0 + x1) / np.float32(2), (y0 + y1) / np.float32(2), x1 - x0, y1 - y0], axis=-1)


# ---------------------------------------------------------------- validation


def validate_points(points, labels, orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Check point prompts: points [N, 2] x,y px inside the image, labels [N] in {0, 1}.

    Returns (float32 [N, 2], int64 [N]). Raises InputError naming the bad entry.
    """
    pts = _finite_array(points, "points", (-1, 2), "[[x, y], ...] in pixels")
    lab = _labels(labels, "point_labels", len(pts), "1 (foreground) or 0 (background)")
    _inside(pts[:, 0], orig_hw[1], "points", "x", "width")
    _inside(pts[:, 1], orig_hw[0], "points", "y", "height")
    return pts, lab


def validate_boxes(boxes, orig_hw: tuple[int, int], name: str = "boxes") -> np.ndarray:
    """Check boxes [K, 4] x0,y0,x1,y1 px inside the image with x0 <= x1 and y0 <= y1.

    Returns float32 [K, 4]. Raises InputError naming the bad box.
    """
    b = _finite_array(boxes, name, (-1, 4), "[[x0, y0, x1, y1], ...] in pixels")
    for i, (x0, y0, x1, y1) in enumerate(b.tolist()):
        if x1 < x0 or y1 < y0:
            raise InputError(
                f"{name}[{i}] = {[x0, y0, x1, y1]} has x1 < x0 or y1 < y0; send [x_min, y_min, x_max, y_max]"
            )
    _inside(b[:, 0::2].ravel(), orig_hw[1], name, "x", "width")
    _inside(b[:, 1::2].ravel(), orig_hw[0], name, "y", "height")
    return b


def validate_box_labels(labels, count: int) -> np.ndarray:
    """Check exemplar box labels [K] in {0, 1} (1 positive, 0 negative). Returns int64 [K]."""
    return _labels(labels, "box_labels", count, "1 (positive) or 0 (negative)")


def _finite_array(values, name: str, shape: tuple[int, int], fmt: str) -> np.ndarray:
    """values → float32 array of ``shape`` (-1 = any ≥ 1), all finite."""
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numbers shaped {fmt}; got {values!r:.80}") from exc
    if arr.ndim != 2 or arr.shape[1] != shape[1] or arr.shape[0] < 1:
        raise InputError(f"{name} must have shape [N, {shape[1]}] with N >= 1 ({fmt}); got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinity; send finite pixel coordinates")
    return arr


def _labels(values, name: str, count: int, meaning: str) -> np.ndarray:
    """values → int64 [count] with every entry 0 or 1."""
    arr = np.asarray(values)
    if arr.shape != (count,):
        raise InputError(f"{name} must have one label per entry ({count}); got shape {list(arr.shape)}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinity; each label is {meaning}")
    if arr.dtype.kind not in "biuf" or not ((arr == 0) | (arr == 1)).all():  # np.isin: 10x slower at this size
        raise InputError(f"{name} must be {meaning}; got {arr.tolist()!r:.80}")
    return arr.astype(np.int64)


def _inside(coords: np.ndarray, limit: int, name: str, axis: str, side: str) -> None:
    """Raise InputError if any coordinate is outside [0, limit]."""
    bad = (coords < 0) | (coords > limit)
    if bad.any():
        value = float(coords[np.argmax(bad)])
        raise InputError(
            f"{name} has {axis} = {value:g} outside the image (0..{limit} px, the image {side}); "
            "coordinates are pixels of the original image"
        )
