"""client/ library against the real tiny-model Triton server, over gRPC and HTTP.

The tiny model has random weights: scores sit around 0.1–0.5, so text mode uses a low
threshold and auto mode turns its filters off. Checks are of types, shapes and consistency.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from client import Sam3Client, Sam3Error, Sam3InputError, Segmentation, encode_image_input
from client.api import UploadedIds
from client.overlay import draw_overlay
from client.results import segmentation_from_outputs
from sam3_spec import UNCACHED_IMAGE_ID

PROTOCOLS = ("grpc", "http")
ROOT = Path(__file__).resolve().parents[1]


def _url(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_address


@pytest.fixture(scope="module", params=PROTOCOLS)
def sam(request, sam3_server):
    with Sam3Client(_url(sam3_server, request.param), request.param, timeout_s=120) as client:
        yield client


@pytest.fixture(scope="module")
def astronaut(astronaut_png) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(astronaut_png)).convert("RGB"))


def check_segmentation(seg: Segmentation, image_hw: tuple[int, int], candidates: int | None = None) -> None:
    """Types, shapes and mutual consistency of every field of one result."""
    d, (h, w) = len(seg), image_hw
    assert seg.image_shape == (h, w)
    assert seg.boxes.dtype == np.float32 and seg.boxes.shape == (d, 4)
    assert seg.scores.dtype == np.float32 and seg.scores.shape == (d,)
    assert seg.labels.dtype == np.int32 and seg.labels.shape == (d,)
    assert seg.iou_scores.dtype == np.float32 and seg.iou_scores.shape[0] == d
    assert seg.stability_scores.shape == (d,)
    assert seg.masks.dtype == bool and seg.masks.shape == (d, h, w)
    assert np.isfinite(seg.boxes).all() and (seg.boxes[:, 2:] >= seg.boxes[:, :2]).all()
    if candidates is not None:
        assert seg.iou_scores.shape == (d, candidates)
    for i in range(d):
        rle = seg.rle(i)
        assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
        assert np.array_equal(mask_utils.decode({"size": [h, w], "counts": rle["counts"].encode()}), seg.masks[i])
        assert seg.area(i) == int(seg.masks[i].sum())


def boxes_inside(seg: Segmentation) -> bool:
    h, w = seg.image_shape
    return bool((seg.boxes >= 0).all() and (seg.boxes[:, [0, 2]] <= w).all() and (seg.boxes[:, [1, 3]] <= h).all())


def test_text_mode(sam, astronaut):
    seg = sam.text(astronaut, ["person", "cat"], threshold=0.1)
    assert sam.is_ready()
    check_segmentation(seg, astronaut.shape[:2], candidates=0)
    assert len(seg) > 0 and len(seg.masks_rle) == len(seg)
    assert seg.concepts == ["person", "cat"] and seg.mode == "text"
    assert ((seg.labels >= 0) & (seg.labels < 2)).all() and (seg.scores > 0.1).all()
    assert {seg.label_name(i) for i in range(len(seg))} <= {"person", "cat"}


def test_text_mode_exemplar_boxes_only(sam, astronaut):
    seg = sam.text(astronaut, exemplar_boxes=[[150, 20, 320, 250]], exemplar_labels=[1], threshold=0.1)
    check_segmentation(seg, astronaut.shape[:2])
    assert seg.concepts == ["visual"] and (seg.labels == 0).all()


def test_point_mode(sam, coffee_jpeg):
    seg = sam.points(coffee_jpeg, [[300, 150], [20, 20]], [1, 0])
    check_segmentation(seg, (400, 600), candidates=3)
    assert len(seg) == 1 and seg.labels.tolist() == [0] and boxes_inside(seg)
    assert seg.scores[0] == pytest.approx(seg.iou_scores[0].max())  # the best of 3 candidates


def test_box_mode_bool_masks(sam, coffee_jpeg):
    boxes = [[150, 50, 450, 300], [10, 10, 100, 100]]
    seg = sam.boxes(coffee_jpeg, boxes, mask_format="bool")
    assert seg.masks_rle == [] and seg.masks.shape == (2, 400, 600)  # sent as booleans, no RLE
    check_segmentation(seg, (400, 600), candidates=3)
    assert seg.labels.tolist() == [0, 1] and boxes_inside(seg)
    same = sam.boxes(coffee_jpeg, boxes)  # default RLE gives the same masks
    assert np.array_equal(same.masks, seg.masks) and len(same.masks_rle) == 2


def test_auto_mode(sam, astronaut):
    seg = sam.auto(astronaut, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    check_segmentation(seg, astronaut.shape[:2])
    assert len(seg) >= 1 and boxes_inside(seg) and seg.concepts == []
    assert ((seg.stability_scores >= 0) & (seg.stability_scores <= 1)).all()


def test_same_result_over_http_and_grpc(sam3_server, astronaut_png):
    results = []
    for protocol in PROTOCOLS:
        with Sam3Client(_url(sam3_server, protocol), protocol) as client:
            results.append(client.text(astronaut_png, "person", threshold=0.1))
    grpc, http = results
    assert len(grpc) > 0 and grpc.masks_rle == http.masks_rle
    for name in ("boxes", "scores", "labels", "iou_scores", "stability_scores"):
        assert np.array_equal(getattr(grpc, name), getattr(http, name)), name


def test_image_input_kinds_give_the_same_result(sam3_server, astronaut, tmp_path):
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    inputs = (path, str(path), path.read_bytes(), Image.fromarray(astronaut), astronaut)
    with Sam3Client(sam3_server.grpc_url) as client:
        results = [client.points(image, [[250, 150]]) for image in inputs]
    for seg in results[1:]:
        assert seg.masks_rle == results[0].masks_rle and np.array_equal(seg.scores, results[0].scores)


@pytest.mark.parametrize(
    "request_, words",
    [
        (lambda c, img: c.points(img, [[9000, 10]]), ("points", "outside the image")),
        (lambda c, img: c.segment(img, "bogus"), ("unknown mode", "text, point, box, auto")),
        (lambda c, img: c.text(b"not an image at all", "person"), ("not a decodable image",)),
    ],
    ids=["point-outside", "unknown-mode", "undecodable-image"],
)
def test_bad_requests_raise_400(sam, astronaut_png, request_, words):
    with pytest.raises(Sam3Error) as caught:
        request_(sam, astronaut_png)
    err = caught.value
    assert err.status == 400 and err.protocol == sam.protocol
    assert all(w in err.message for w in words), err.message
    assert not err.message.startswith(("[", "INVALID_ARGUMENT")), err.message


def test_client_side_input_errors(sam3_server, astronaut_png):
    client = Sam3Client(sam3_server.grpc_url)
    with pytest.raises(Sam3InputError, match="unknown input 'colour'") as caught:
        client.segment(astronaut_png, "text", colour="red")
    assert caught.value.status == 400 and isinstance(caught.value, ValueError)
    with pytest.raises(Sam3InputError, match=r"points must have shape \(points, 2\)"):
        client.points(astronaut_png, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closed_port_is_503(protocol, astronaut_png):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{sock.getsockname()[1]}"
    client = Sam3Client(url, protocol, timeout_s=10)
    assert client.is_ready() is False
    with pytest.raises(Sam3Error) as caught:
        client.points(astronaut_png, [[10, 10]])
    assert caught.value.status == 503 and url in caught.value.message


def test_encode_image_input_rejects_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="image must be"):
        encode_image_input(42)
    with pytest.raises(ValueError, match="uint8"):
        encode_image_input(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        encode_image_input(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        encode_image_input(b"")
    with pytest.raises(FileNotFoundError, match="not found"):
        encode_image_input(tmp_path / "missing.png")
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image_input(pixels)))), pixels)  # lossless


def test_url_schemes():
    assert Sam3Client("http://127.0.0.1:8000/", "http").address == "127.0.0.1:8000"
    assert Sam3Client("https://example.test:443", "http").ssl is True
    with pytest.raises(ValueError, match="does not fit protocol"):
        Sam3Client("http://127.0.0.1:8001", "grpc")
    with pytest.raises(ValueError, match="protocol must be"):
        Sam3Client("127.0.0.1:8001", "websocket")


def test_empty_result_and_json():
    outputs = {
        "masks_rle": np.zeros(0),
        "masks": np.zeros((0, 5, 7)),
        "boxes": np.zeros((0, 4)),
        "scores": np.zeros(0),
        "labels": np.zeros(0),
        "iou_scores": np.zeros((0, 0)),
        "stability_scores": np.zeros(0),
        "image_shape": np.array([5, 7], np.int32),
    }
    seg = segmentation_from_outputs(outputs, ["person"], "text")  # HTTP gives float64 for empty tensors
    assert len(seg) == 0 and seg.labels.dtype == np.int32 and seg.masks.shape == (0, 5, 7)
    assert seg.to_json() == {
        "image_shape": [5, 7],
        "mode": "text",
        "concepts": ["person"],
        "count": 0,
        "detections": [],
    }


def test_to_json_and_overlay(sam3_server, astronaut):
    with Sam3Client(sam3_server.grpc_url) as client:
        seg = client.boxes(astronaut, [[150, 20, 320, 250]])
    item = seg.to_json()["detections"][0]
    assert set(item) == {"index", "label", "name", "score", "box", "iou_scores", "stability_score", "area", "mask"}
    assert item["mask"] == seg.rle(0) and "mask" not in seg.to_json(masks="none")["detections"][0]
    overlay = draw_overlay(astronaut, seg, prompt_boxes=[[150, 20, 320, 250]])
    assert overlay.size == (512, 512) and not np.array_equal(np.asarray(overlay), astronaut)
    with pytest.raises(ValueError, match="draw over the image that was segmented"):
        draw_overlay(astronaut[:100], seg)


def test_client_imports_without_torch():
    code = "import sys, client, client.cli, client.overlay; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_an_image_sent_with_its_id_is_not_sent_again(sam3_server, coffee_jpeg, tmp_path):
    """The second click on an image_id this client uploaded sends no image (nor reads it: the file is gone);
    a client with reuse_uploads=False reads it every time."""
    path = tmp_path / "coffee.jpg"
    path.write_bytes(coffee_jpeg)
    with Sam3Client(sam3_server.grpc_url) as client, Sam3Client(sam3_server.grpc_url, reuse_uploads=False) as plain:
        first = client.points(path, [[300, 150]], [1], image_id="upload-once")
        path.unlink()
        again = client.points(path, [[300, 150]], [1], image_id="upload-once")
        assert np.array_equal(again.masks, first.masks) and again.image_shape == (400, 600)
        with pytest.raises(FileNotFoundError, match="coffee.jpg"):
            plain.points(path, [[300, 150]], [1], image_id="upload-once")


def test_an_id_the_server_no_longer_has_is_sent_again_with_its_image(sam, coffee_jpeg):
    """An id this client uploaded but the server lost (evicted, restarted: here, never sent to this server) is
    retried once with the image; other errors are not retried."""
    lost = f"lost-by-the-server-{sam.protocol}"
    sam._uploaded.add(lost)  # as after a server restart
    seg = sam.boxes(coffee_jpeg, [[150, 50, 450, 300]], image_id=lost)
    assert len(seg) == 1 and seg.image_shape == (400, 600) and sam._uploaded.has(lost)
    with pytest.raises(Sam3Error) as info:  # a bad request of a remembered id: its own 400, as is
        sam.boxes(coffee_jpeg, [[150, 50, 450, 300]], mask_threshold=5.0, image_id=lost)
    assert info.value.status == 400 and UNCACHED_IMAGE_ID not in info.value.message


def test_uploaded_ids_keep_the_newest():
    ids = UploadedIds(capacity=2)
    for name in ("a", "b", "a", "c"):
        ids.add(name)
    assert [ids.has(n) for n in "abc"] == [True, False, True]
    ids.forget("a")
    assert not ids.has("a")
