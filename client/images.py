"""Images for the client: any accepted input → encoded bytes (what the server decodes), or → RGB pixels.

Accepted inputs: a path (``str`` / ``pathlib.Path``) to an image file, the encoded file bytes
(``bytes`` / ``bytearray`` / ``memoryview``: JPEG, PNG, WebP, ...), a ``PIL.Image.Image``, or a
numpy uint8 array HxWx3 (RGB), HxWx4 (RGBA) or HxW (gray). Arrays and PIL images are encoded as
PNG (lossless), so the server sees exactly these pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ACCEPTED = "a path, encoded image bytes, a PIL.Image or a numpy uint8 array HxWx3"


def encode_image_input(image) -> bytes:
    """Encoded image file bytes for the ``image`` input of the `sam3` model.

    Raises TypeError for an unsupported type, ValueError for empty bytes or a badly shaped
    or typed array, FileNotFoundError for a missing path.
    """
    if isinstance(image, (str, Path)):
        return _read_file(Path(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _nonempty(bytes(image))
    if isinstance(image, Image.Image):
        return _png(image)
    if isinstance(image, np.ndarray):
        return _png(Image.fromarray(_checked_array(image)))
    raise TypeError(f"image must be {ACCEPTED}; got {type(image).__name__}")


def load_image_rgb(image) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of any accepted input, oriented like the server (EXIF applied)."""
    if isinstance(image, np.ndarray):
        return np.asarray(Image.fromarray(_checked_array(image)).convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    with Image.open(io.BytesIO(encode_image_input(image))) as opened:
        return np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return _nonempty(path.read_bytes(), str(path))


def _nonempty(data: bytes, what: str = "image bytes") -> bytes:
    if not data:
        raise ValueError(f"{what} is empty: send the encoded image file (JPEG, PNG or WebP)")
    return data


def _checked_array(array: np.ndarray) -> np.ndarray:
    """The array itself when it is uint8 HxW, HxWx3 or HxWx4; else ValueError saying how to fix it."""
    if array.dtype != np.uint8:
        raise ValueError(
            f"image array must be uint8 (0..255); got {array.dtype}: convert it, "
            "e.g. (array * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        if array.shape[0] and array.shape[1]:
            return np.ascontiguousarray(array)
    raise ValueError(f"image array must be HxWx3 (RGB), HxWx4 (RGBA) or HxW (gray); got shape {array.shape}")


def _png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of a PIL image (modes PNG cannot store are converted to RGB first)."""
    if image.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "1", "P"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
