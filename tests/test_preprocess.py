"""Image decoding, model resizing and prompt coordinates of the sam3 orchestrator vs transformers."""

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.tokenizer import load_vocab_merges

ORCH = Path(__file__).resolve().parents[1] / "triton_repo" / "sam3" / "1"
sys.path.insert(0, str(ORCH))

from errors import InputError  # noqa: E402
from preprocess import (  # noqa: E402
    boxes_xyxy_to_cxcywh_norm,
    decode_image,
    decode_plain_png,
    is_plain_png,
    resize_for_model,
    resize_numpy,
    resize_torch,
    scale_points,
    validate_box_labels,
    validate_boxes,
    validate_points,
)

MAX_PIXELS = 40_000_000
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")


def _skimage_photo(name: str) -> np.ndarray:
    import skimage  # noqa: PLC0415 (optional: test extra)

    return np.array(Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB"))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose pixel data is 16 bytes of zeros (undecodable)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bytes(16))


# ---------------------------------------------------------------- decode


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_formats(fmt):
    rgb = _skimage_photo("chelsea.png")
    out = decode_image(_encode(Image.fromarray(rgb), fmt), MAX_PIXELS)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if fmt == "PNG":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 8


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1"])
def test_decode_modes_match_transformers_convert_to_rgb(mode):
    from transformers.image_transforms import convert_to_rgb  # noqa: PLC0415 (optional: export extra)

    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (23, 31, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    data = _encode(image, "JPEG" if mode == "CMYK" else "PNG")
    expected = convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), expected)


def test_decode_palette_with_transparency_composites_on_white():
    image = Image.new("P", (4, 3), 0)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    out = decode_image(_encode(image, "PNG", transparency=0), MAX_PIXELS)
    assert (out == 255).all()


def test_decode_16bit_gray_keeps_high_byte():
    gray = np.arange(12 * 7, dtype=np.uint16).reshape(12, 7) * 700
    data = _encode(Image.fromarray(gray), "PNG")  # mode I;16
    out = decode_image(data, MAX_PIXELS)
    assert out.shape == (12, 7, 3)
    np.testing.assert_array_equal(out[:, :, 1], (gray >> 8).astype(np.uint8))


def test_decode_applies_exif_orientation():
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :10] = 255  # white on the left
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95), MAX_PIXELS)
    assert out.shape == (40, 20, 3)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # left edge became the top


ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def _interlaced_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG of ``rgb`` (Pillow writes none): each pass's rows, filter 0."""
    rows = b""
    for y0, x0, dy, dx in ADAM7:
        part = rgb[y0::dy, x0::dx]
        if part.size:
            rows += b"".join(b"\x00" + row.tobytes() for row in part)
    ihdr = struct.pack(">IIBBBBB", rgb.shape[1], rgb.shape[0], 8, 2, 0, 0, 1)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _plain_pngs() -> dict[str, bytes]:
    """8-bit RGB PNGs: photos at three compress levels (Pillow's adaptive filters pick per row), noise,
    tiny and odd sizes, an interlaced one."""
    rng = np.random.default_rng(7)
    noise, odd = rng.integers(0, 256, (37, 53, 3), np.uint8), rng.integers(0, 256, (3, 7, 3), np.uint8)
    pngs = {
        f"{n}-level{k}": _encode(Image.fromarray(_skimage_photo(n)), "PNG", compress_level=k)
        for n in SKIMAGE_PHOTOS
        for k in (1, 6, 9)
    }
    pngs |= {"noise": _encode(Image.fromarray(noise), "PNG"), "3x7": _encode(Image.fromarray(odd), "PNG")}
    pngs |= {"1x1": _encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"), "interlaced": _interlaced_png(noise)}
    return pngs


@pytest.mark.parametrize("name, data", list(_plain_pngs().items()), ids=list(_plain_pngs()))
def test_plain_pngs_decode_by_libspng_to_pillows_bytes(name, data):
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert is_plain_png(data)
    fast = decode_plain_png(data)
    assert fast is not None and not fast.flags.writeable
    np.testing.assert_array_equal(fast, pillow)
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), pillow)


def _other_pngs() -> dict[str, bytes]:
    """PNGs that decode_image treats beyond plain pixels: alpha, a transparent colour, a palette, gray,
    16-bit samples, EXIF orientation, animation."""
    rgb = Image.fromarray(np.full((6, 5, 3), 40, np.uint8))
    exif = rgb.getexif()
    exif[0x0112] = 6
    frames = [rgb, Image.new("RGB", (5, 6), (200, 0, 0))]
    pngs = {"rgba": _encode(rgb.convert("RGBA"), "PNG"), "trns": _encode(rgb, "PNG", transparency=(40, 40, 40))}
    pngs |= {"palette": _encode(rgb.convert("P"), "PNG"), "gray": _encode(rgb.convert("L"), "PNG")}
    pngs |= {"rgb16": _png_header_only(5, 6).replace(b"\x08\x02", b"\x10\x02", 1)}
    pngs |= {"exif": _encode(rgb, "PNG", exif=exif.tobytes())}
    return pngs | {"animated": _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])}


@pytest.mark.parametrize("name, data", list(_other_pngs().items()), ids=list(_other_pngs()))
def test_other_pngs_are_left_to_pillow(name, data):
    assert not is_plain_png(data)
    assert decode_plain_png(data) is None


def test_a_png_libspng_refuses_goes_to_pillow_and_its_error():
    data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60]
    assert is_plain_png(data) and decode_plain_png(data) is None
    with pytest.raises(InputError, match="could not be decoded"):
        decode_image(data, MAX_PIXELS)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a decodable image"),
        (_encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], "could not be decoded"),
    ],
)
def test_decode_rejects_bad_bytes(data, words):
    with pytest.raises(InputError, match=words):
        decode_image(data, MAX_PIXELS)


def test_decode_rejects_large_image_from_header_alone():
    # 10000x5000 = 50 MP: refused from the header; the file holds no pixel data at all.
    with pytest.raises(InputError, match=r"10000x5000 = 50.0 MP, over the 40.0 MP limit; downscale it"):
        decode_image(_png_header_only(10000, 5000), MAX_PIXELS)


def test_decode_rejects_decompression_bomb():
    with pytest.raises(InputError, match="downscale"):
        decode_image(_png_header_only(100_000, 100_000), 10**12)


def test_decode_limit_is_inclusive():
    data = _encode(Image.new("RGB", (10, 10)), "PNG")
    assert decode_image(data, 100).shape == (10, 10, 3)
    with pytest.raises(InputError, match="over the"):
        decode_image(data, 99)


# ---------------------------------------------------------------- resize


@pytest.fixture(scope="module")
def sam3_image_processor():
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor  # noqa: PLC0415 (optional: export extra)

    return Sam3ImageProcessor()


@pytest.mark.parametrize("name", [*SKIMAGE_PHOTOS, "random_333x517", "random_1200x700"])
def test_resize_matches_sam3_image_processor(name, sam3_image_processor):
    if name.startswith("random"):
        h, w = (int(v) for v in name.split("_")[1].split("x"))
        image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        image = _skimage_photo(name)
    size = sam3_image_processor.size["height"]
    ref = sam3_image_processor(images=image, return_tensors="np")["pixel_values"][0]
    out = resize_for_model(image, size)
    assert out.shape == (1, 3, size, size) and out.dtype == np.uint8
    levels = np.abs(out[0].astype(np.float64) - (ref.astype(np.float64) * 0.5 + 0.5) * 255)
    print(f"{name}: max diff {levels.max():.4f} levels, mean {levels.mean():.2e}")
    assert levels.max() <= 1.0 + 1e-3
    assert (levels > 0.5).mean() < 1e-4
    np.testing.assert_allclose(((out[0] / 255.0) - 0.5) / 0.5, ref, atol=1e-6)


@pytest.mark.parametrize("hw", [(512, 512), (1080, 1920), (333, 517), (200, 90), (7, 1300)])
@pytest.mark.parametrize("size", [504, 1008, 64])
def test_torch_kernel_and_numpy_mirror_give_the_same_bytes(hw, size):
    """The served path (torch's kernel) and the fallback (numpy) agree exactly, down and up."""
    image = np.random.default_rng(hw[0] * size).integers(0, 256, (*hw, 3), dtype=np.uint8)
    image.setflags(write=False)  # as decode_image returns it
    out = resize_torch(image, size)
    assert out.shape == (1, 3, size, size) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, resize_numpy(image, size))


def test_resize_identity_and_small_sizes():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_for_model(image, 16)[0], image.transpose(2, 0, 1))
    assert resize_for_model(image[:1, :3], 8).shape == (1, 3, 8, 8)


# ---------------------------------------------------------------- coordinates


def test_scale_points_matches_sam3_tracker_processor(sam3_image_processor):
    from transformers.models.sam3_tracker.processing_sam3_tracker import Sam3TrackerProcessor  # noqa: PLC0415 (optional: export extra)

    proc = Sam3TrackerProcessor(image_processor=sam3_image_processor)
    hw, size = (333, 517), sam3_image_processor.size["height"]
    points = np.array([[10.3, 20.7], [516.9, 332.2], [0.0, 333.0]], np.float32)
    boxes = np.array([[1.5, 2.5, 400.1, 300.3], [0, 0, 517, 333]], np.float32)
    ref = proc(
        original_sizes=[list(hw)],
        input_points=[[points.tolist()]],
        input_labels=[[[1, 0, 1]]],
        input_boxes=[boxes.tolist()],
    )
    np.testing.assert_array_equal(scale_points(points, hw, size), ref["input_points"][0, 0].numpy())
    np.testing.assert_array_equal(
        scale_points(boxes.reshape(-1, 2, 2), hw, size).reshape(-1, 4), ref["input_boxes"][0].numpy()
    )


def test_exemplar_boxes_match_sam3_processor(sam3_image_processor):
    from transformers import CLIPTokenizer  # noqa: PLC0415 (optional: export extra)
    from transformers.models.sam3.processing_sam3 import Sam3Processor  # noqa: PLC0415 (optional: export extra)

    vocab, merges = load_vocab_merges()
    proc = Sam3Processor(image_processor=sam3_image_processor, tokenizer=CLIPTokenizer(vocab=vocab, merges=merges))
    hw = (480, 640)
    boxes = np.array([[10.5, 20.25, 300.0, 400.75], [0, 0, 640, 480], [33.3, 44.4, 55.5, 66.6]], np.float32)
    ref = proc(original_sizes=[list(hw)], input_boxes=[boxes.tolist()], input_boxes_labels=[[1, 0, 1]])
    np.testing.assert_array_equal(boxes_xyxy_to_cxcywh_norm(boxes, hw), ref["input_boxes"][0].numpy())


def test_validate_points_accepts_and_converts():
    pts, labels = validate_points([[0, 0], [640, 480], [3.5, 7.25]], [1, 0, 1], (480, 640))
    assert pts.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [1, 0, 1])


@pytest.mark.parametrize(
    "points, labels, words",
    [
        ([[1, 2, 3]], [1], r"shape \[N, 2\]"),
        ([], [], r"shape \[N, 2\]"),
        ([[np.nan, 2]], [1], "NaN or infinity"),
        ([[np.inf, 2]], [1], "NaN or infinity"),
        ([[641, 2]], [1], "x = 641 outside the image"),
        ([[5, -0.5]], [1], "y = -0.5 outside the image"),
        ([[5, 5]], [2], "must be 1 \\(foreground\\) or 0"),
        ([[5, 5], [6, 6]], [1], "one label per entry"),
        ([["a", 5]], [1], "must be numbers"),
    ],
)
def test_validate_points_rejects(points, labels, words):
    with pytest.raises(InputError, match=words):
        validate_points(points, labels, (480, 640))


@pytest.mark.parametrize(
    "boxes, words",
    [
        ([[10, 10, 5, 20]], "x1 < x0"),
        ([[10, 30, 50, 20]], "x1 < x0 or y1 < y0"),
        ([[0, 0, 700, 20]], "x = 700 outside"),
        ([[0, 0, 10, 481]], "y = 481 outside"),
        ([[0, 0, np.nan, 1]], "NaN"),
        ([0, 0, 10, 10], r"shape \[N, 4\]"),
    ],
)
def test_validate_boxes_rejects(boxes, words):
    with pytest.raises(InputError, match=words):
        validate_boxes(boxes, (480, 640))


def test_validate_boxes_and_labels_accept():
    boxes = validate_boxes([[0, 0, 640, 480], [5, 5, 5, 9]], (480, 640))
    assert boxes.shape == (2, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(validate_box_labels(np.array([1, 0], np.int32), 2), [1, 0])
    with pytest.raises(InputError, match="box_labels must be 1"):
        validate_box_labels([1, 3], 2)


def test_orchestrator_modules_work_without_torch():
    """A serve-only install has no torch: the modules import, and the resize falls back to numpy. Without
    pyspng (no wheel for the platform) Pillow decodes every PNG."""
    code = (
        "import sys; sys.modules['torch'] = sys.modules['pyspng'] = None; sys.path.insert(0, sys.argv[1]); "
        "import errors, preprocess, postprocess, amg, text_tokens; import numpy as np; "
        "assert preprocess.torch is None; "
        "assert preprocess.resize_for_model(np.zeros((10, 12, 3), np.uint8), 8).shape == (1, 3, 8, 8); "
        "import io; from PIL import Image; png = io.BytesIO(); Image.new('RGB', (4, 3), (5, 6, 7)).save(png, 'PNG'); "
        "assert preprocess.pyspng is None and (preprocess.decode_image(png.getvalue(), 100) == (5, 6, 7)).all(); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'transformers')); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code, str(ORCH)], check=True, timeout=120)
