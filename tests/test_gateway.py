"""The REST gateway (server/gateway.py) for real: uvicorn on 127.0.0.1, the session Triton server behind it.

Requests are written as in the seeds' README (requests-style JSON, here through httpx); every
response key and type of the seeds' contract is checked, masks are compared with what the
Python client gets from Triton directly, and each bad request must get its 4xx with a message
naming the field.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from client.api import Sam3Client
from sam3_spec import MODES
from server.gateway import BackgroundServer, create_app
from server.rest import FIELD_NAMES, MASK_FORMATS, _num, bool_mask_json, image_size

TOKEN = "s3cret-token"
SMALL_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def api(gateway_url):
    with httpx.Client(base_url=gateway_url, timeout=180, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def secured(sam3_server):
    """A gateway with a bearer token and a small body limit."""
    app = create_app(sam3_server.grpc_url, auth_token=TOKEN, max_body_bytes=SMALL_LIMIT)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=180, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def image_b64(astronaut_png) -> str:
    return base64.b64encode(astronaut_png).decode()


@pytest.fixture(scope="module")
def sam(sam3_server):
    with Sam3Client(sam3_server.grpc_url, protocol="grpc") as client:
        yield client


def small_png_b64(seed: int = 0, size: int = 64) -> str:
    """base64 of a size x size random RGB PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def ok_json(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assert_bool_mask(mask, image_shape) -> np.ndarray:
    """A JSON bool[][] of image_shape → numpy bool array."""
    assert isinstance(mask, list) and len(mask) == image_shape[0]
    assert all(isinstance(row, list) and len(row) == image_shape[1] for row in mask)
    assert all(type(v) is bool for v in mask[0]) and all(type(v) is bool for v in mask[-1])
    return np.array(mask, dtype=bool)


def assert_floats(values, count=None):
    assert isinstance(values, list) and all(type(v) is float for v in values), values
    if count is not None:
        assert len(values) == count


# ---------------------------------------------------------------- the seeds' examples


def test_text_mode_as_in_the_seeds(api, image_b64):
    result = ok_json(api.post("/", json={"image": image_b64, "mode": "text", "text": "person"}))
    assert list(result) == ["masks", "boxes", "scores", "count", "image_shape"]
    assert result["image_shape"] == [512, 512] and type(result["count"]) is int
    assert len(result["masks"]) == len(result["boxes"]) == len(result["scores"]) == result["count"]


def top_threshold(seg, n: int = 3) -> float:
    """A threshold that keeps about the n best detections of a threshold-0 result (random weights: low scores)."""
    assert len(seg) >= n
    return float(np.sort(seg.scores)[-n]) - 1e-4


def test_text_masks_boxes_scores_match_triton(api, image_b64, astronaut_png, sam):
    threshold = top_threshold(sam.text(astronaut_png, "person", threshold=0.0))
    result = ok_json(
        api.post("/segment", json={"image": image_b64, "mode": "text", "text": "person", "threshold": threshold})
    )
    direct = sam.text(astronaut_png, "person", threshold=threshold)
    assert result["count"] == len(direct) >= 3
    masks = np.stack([assert_bool_mask(m, result["image_shape"]) for m in result["masks"]])
    np.testing.assert_array_equal(masks, direct.masks)
    for box in result["boxes"]:
        assert_floats(box, 4)
    np.testing.assert_allclose(result["boxes"], direct.boxes, rtol=1e-6)
    assert_floats(result["scores"], result["count"])
    np.testing.assert_allclose(result["scores"], direct.scores, rtol=1e-6)


def test_point_mode_as_in_the_seeds(api, image_b64, astronaut_png, sam):
    result = ok_json(
        api.post("/", json={"image": image_b64, "mode": "point", "point_coords": [[100, 150]], "point_labels": [1]})
    )
    assert list(result) == ["mask", "score", "all_scores", "image_shape"]
    mask = assert_bool_mask(result["mask"], result["image_shape"])
    assert type(result["score"]) is float
    assert_floats(result["all_scores"], 3)
    assert result["score"] == max(result["all_scores"])
    np.testing.assert_array_equal(mask, sam.points(astronaut_png, [[100, 150]], [1]).masks[0])


def test_box_mode_as_in_the_seeds(api, image_b64, astronaut_png, sam):
    result = ok_json(api.post("/", json={"image": image_b64, "mode": "box", "box_coords": [50, 50, 200, 200]}))
    assert list(result) == ["mask", "score", "all_scores", "image_shape"]
    mask = assert_bool_mask(result["mask"], [512, 512])
    assert_floats(result["all_scores"], 3)
    np.testing.assert_array_equal(mask, sam.boxes(astronaut_png, [[50, 50, 200, 200]]).masks[0])


def test_auto_mode_as_in_the_seeds(api, image_b64):
    result = ok_json(api.post("/", json={"image": image_b64, "mode": "auto"}))
    assert list(result) == ["masks", "count", "image_shape"]
    assert result["count"] == len(result["masks"]) and result["image_shape"] == [512, 512]


def test_auto_mode_records(api, image_b64):
    result = ok_json(
        api.post(
            "/",
            json={
                "image": image_b64,
                "mode": "auto",
                "points_per_side": 4,
                "points_per_batch": 8,
                "pred_iou_thresh": 0.0,
                "stability_score_thresh": 0.0,
            },
        )
    )
    assert result["count"] == len(result["masks"]) >= 1
    for record in result["masks"]:
        assert list(record) == ["segmentation", "score", "area", "bbox", "predicted_iou", "stability_score"]
        mask = assert_bool_mask(record["segmentation"], result["image_shape"])
        assert type(record["area"]) is int and record["area"] == mask.sum()
        assert all(type(v) is int for v in record["bbox"]) and len(record["bbox"]) == 4
        assert all(type(record[k]) is float for k in ("score", "predicted_iou", "stability_score"))
        ys, xs = np.nonzero(mask)
        if len(xs):
            assert record["bbox"][:2] == [int(xs.min()), int(ys.min())]


def test_root_and_segment_routes_give_the_same_bytes(api, image_b64):
    body = {"image": image_b64, "mode": "box", "box_coords": [10, 20, 300, 400]}
    assert api.post("/", json=body).content == api.post("/segment", json=body).content


# ---------------------------------------------------------------- extensions


def test_text_list_adds_labels_and_concepts(api, image_b64, astronaut_png, sam):
    concepts = ["person", "cat"]
    direct = sam.text(astronaut_png, concepts, threshold=0.0)
    threshold = min(
        top_threshold(direct, 1) for direct in (sam.text(astronaut_png, c, threshold=0.0) for c in concepts)
    )  # both concepts detected
    result = ok_json(
        api.post("/", json={"image": image_b64, "text": concepts, "threshold": threshold, "mask_format": "rle"})
    )
    assert list(result) == ["masks", "boxes", "scores", "count", "image_shape", "labels", "concepts"]
    assert result["concepts"] == concepts and all(type(v) is int for v in result["labels"])
    assert len(result["labels"]) == result["count"] and set(result["labels"]) == {0, 1}
    expected = direct.labels[direct.scores > threshold]
    assert sorted(result["labels"]) == sorted(expected.tolist())


def test_exemplar_boxes(api, image_b64, astronaut_png, sam):
    kw = {"exemplar_boxes": [[150, 20, 350, 300]], "exemplar_labels": [1]}
    threshold = top_threshold(sam.text(astronaut_png, "person", threshold=0.0, **kw))
    direct = sam.text(astronaut_png, "person", threshold=threshold, **kw)
    result = ok_json(
        api.post("/", json={"image": image_b64, "text": "person", "threshold": threshold, "mask_format": "rle", **kw})
    )
    assert result["count"] == len(direct) >= 3
    np.testing.assert_allclose(result["scores"], direct.scores, rtol=1e-6)
    assert [m["counts"] for m in result["masks"]] == [direct.rle(i)["counts"] for i in range(len(direct))]


def decode_png(text: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(text)))) > 0


@pytest.mark.parametrize("mode", ["text", "point"])
def test_rle_and_png_masks_decode_to_the_bool_masks(api, image_b64, astronaut_png, sam, mode):
    mode_body = (
        {"mode": "point", "point_coords": [[256, 200]]}
        if mode == "point"
        else {
            "mode": "text",
            "text": "person",
            "threshold": top_threshold(sam.text(astronaut_png, "person", threshold=0)),
        }
    )
    results = {
        fmt: ok_json(api.post("/", json={"image": image_b64, "mask_format": fmt, **mode_body})) for fmt in MASK_FORMATS
    }
    key = "masks" if "masks" in results["bool"] else "mask"
    as_list = (lambda r: r[key]) if key == "masks" else (lambda r: [r[key]])
    bool_masks = [np.array(m, bool) for m in as_list(results["bool"])]
    assert bool_masks
    for got_rle, got_png, expected in zip(as_list(results["rle"]), as_list(results["png"]), bool_masks):
        assert list(got_rle) == ["size", "counts"] and got_rle["size"] == [512, 512]
        np.testing.assert_array_equal(
            mask_utils.decode({"size": got_rle["size"], "counts": got_rle["counts"].encode()}).astype(bool), expected
        )
        np.testing.assert_array_equal(decode_png(got_png), expected)


def test_image_id_reuses_the_cached_embedding(api, image_b64, coffee_jpeg):
    first = ok_json(api.post("/", json={"image": image_b64, "text": "person", "image_id": "gateway-astro"}))
    coffee = base64.b64encode(coffee_jpeg).decode()
    again = ok_json(api.post("/", json={"image": coffee, "text": "person", "image_id": "gateway-astro"}))
    assert again == first  # the embedding (and size) cached under the id were used, not the coffee image
    assert ok_json(api.post("/", json={"image": coffee, "text": "person"}))["image_shape"] == [400, 600]


def test_an_image_sent_with_its_id_need_not_be_sent_again(api, image_b64):
    """After one request with the image and an image_id, the id alone will do (a web page's second click
    uploads nothing); an id the server does not have, or a point outside the cached image, is a clear 400."""
    body = {"mode": "point", "point_coords": [[100, 150]], "point_labels": [1], "mask_format": "rle"}
    first = ok_json(api.post("/", json={"image": image_b64, "image_id": "gateway-id-only"} | body))
    assert ok_json(api.post("/", json={"image_id": "gateway-id-only"} | body)) == first
    unknown = api.post("/", json={"image_id": "gateway-never-sent"} | body)
    assert unknown.status_code == 400 and "not in the embedding cache" in unknown.json()["error"]
    assert "send the image" in unknown.json()["error"]
    outside = api.post("/", json={"image_id": "gateway-id-only"} | body | {"point_coords": [[900, 150]]})
    assert outside.status_code == 400 and "outside the image" in outside.json()["error"], outside.text
    assert "point_coords" in outside.json()["error"]  # in this API's names


def test_data_url_prefix_is_accepted(api, image_b64):
    plain = api.post("/", json={"image": image_b64, "mode": "box", "box_coords": [50, 50, 200, 200]})
    prefixed = api.post(
        "/", json={"image": "data:image/png;base64," + image_b64, "mode": "box", "box_coords": [50, 50, 200, 200]}
    )
    assert plain.status_code == 200 and prefixed.content == plain.content


def test_list_of_boxes_gives_one_object_per_box(api, image_b64, astronaut_png, sam):
    boxes = [[50, 50, 200, 200], [250, 100, 500, 500]]
    result = ok_json(api.post("/", json={"image": image_b64, "mode": "box", "box_coords": boxes}))
    assert list(result) == ["masks", "boxes", "scores", "all_scores", "count", "image_shape"]
    assert result["count"] == 2 and all(len(s) == 3 for s in result["all_scores"])
    masks = np.stack([assert_bool_mask(m, [512, 512]) for m in result["masks"]])
    np.testing.assert_array_equal(masks, sam.boxes(astronaut_png, boxes).masks)


def test_point_mode_with_a_box_is_one_object(api, image_b64, astronaut_png, sam):
    result = ok_json(
        api.post(
            "/",
            json={
                "image": image_b64,
                "mode": "point",
                "point_coords": [[120, 120]],
                "point_labels": [1],
                "box_coords": [50, 50, 200, 200],
            },
        )
    )
    assert list(result) == ["mask", "score", "all_scores", "image_shape"]
    direct = sam.boxes(astronaut_png, [[50, 50, 200, 200]], points=[[120, 120]], point_labels=[1])
    np.testing.assert_array_equal(np.array(result["mask"], bool), direct.masks[0])


# ---------------------------------------------------------------- bad requests


def bad_cases(b64: str, tiny: str) -> list:
    """(id, body (dict → JSON, bytes → raw), status, text the error must contain)."""
    img = {"image": tiny}
    return [
        ("invalid-json", b'{"image": ', 400, "not valid JSON"),
        ("not-an-object", b"[1, 2]", 422, "JSON object"),
        ("missing-image", {"mode": "text", "text": "person"}, 422, "`image`"),
        ("bad-base64", {"image": "this is not base64!", "text": "x"}, 422, "`image` is not valid base64"),
        (
            "not-an-image",
            {"image": base64.b64encode(b"hello, not a picture").decode(), "text": "x"},
            400,
            "`image` is not a decodable image",
        ),
        (
            "truncated-png",  # the gateway reads the header only; the orchestrator's decoder finds the cut
            {"image": _truncated_png_b64(b64), "mode": "point", "point_coords": [[10, 10]]},
            400,
            "could not be decoded",
        ),
        ("unknown-mode", img | {"mode": "segment"}, 422, "`mode`"),
        ("missing-text", img | {"mode": "text"}, 422, "`text`"),
        ("empty-text", img | {"text": " "}, 422, "`text`"),
        ("text-not-string", img | {"text": 5}, 422, "`text`"),
        ("missing-points", img | {"mode": "point"}, 422, "`point_coords`"),
        ("missing-box", img | {"mode": "box"}, 422, "`box_coords`"),
        ("point-outside", img | {"mode": "point", "point_coords": [[10, 999]]}, 400, "`point_coords[0]`"),
        ("box-outside", img | {"mode": "box", "box_coords": [0, 0, 65, 10]}, 400, "`box_coords[0]`"),
        ("exemplar-outside", img | {"text": "x", "exemplar_boxes": [[0, 0, 10, 70]]}, 400, "`exemplar_boxes[0]`"),
        ("nan-threshold", b'{"image": "%s", "text": "x", "threshold": NaN}' % tiny.encode(), 422, "`threshold`"),
        (
            "nan-point",
            b'{"image": "%s", "mode": "point", "point_coords": [[NaN, 1]]}' % tiny.encode(),
            422,
            "`point_coords[0][0]`",
        ),
        (
            "huge-integer",
            b'{"image": "%s", "mode": "auto", "points_per_side": 1%s}' % (tiny.encode(), b"0" * 400),
            422,
            "`points_per_side`",
        ),
        ("threshold-string", img | {"text": "x", "threshold": "high"}, 422, "`threshold`"),
        ("threshold-bool", img | {"text": "x", "threshold": True}, 422, "`threshold`"),
        ("threshold-range", img | {"text": "x", "threshold": 2}, 422, "`threshold` must be in [0, 1]"),
        ("point-shape", img | {"mode": "point", "point_coords": [[1]]}, 422, "`point_coords`"),
        ("point-flat", img | {"mode": "point", "point_coords": [1, 2]}, 422, "`point_coords`"),
        ("label-value", img | {"mode": "point", "point_coords": [[1, 2]], "point_labels": [2]}, 422, "`point_labels`"),
        (
            "label-count",
            img | {"mode": "point", "point_coords": [[1, 2]], "point_labels": [1, 0]},
            422,
            "`point_labels`",
        ),
        ("box-length", img | {"mode": "box", "box_coords": [1, 2, 3]}, 422, "`box_coords`"),
        ("box-inverted", img | {"mode": "box", "box_coords": [40, 40, 10, 10]}, 422, "`box_coords[0]`"),
        ("mask-format", img | {"text": "x", "mask_format": "jpeg"}, 422, "`mask_format`"),
        ("batch-zero", img | {"mode": "auto", "points_per_batch": 0}, 422, "`points_per_batch`"),
        ("side-fraction", img | {"mode": "auto", "points_per_side": 2.5}, 422, "`points_per_side`"),
        ("image-id-empty", img | {"text": "x", "image_id": ""}, 422, "`image_id`"),
        ("labels-without-boxes", img | {"text": "x", "exemplar_labels": [1]}, 422, "`exemplar_labels`"),
        (
            "over-gateway-list-limit",
            img | {"mode": "box", "box_coords": [[0, 0, 1, 1]] * 1025},
            422,
            "`box_coords` has 1025 entries",
        ),
        ("too-many-points", img | {"mode": "point", "point_coords": [[1, 1]] * 14}, 400, "point_coords"),
        ("too-many-concepts", img | {"text": [f"c{i}" for i in range(17)]}, 400, "text"),
    ]


def _truncated_png_b64(b64: str) -> str:
    """The first half of a base64 PNG's bytes, base64 again ("" for "")."""
    data = base64.b64decode(b64)
    return base64.b64encode(data[: len(data) // 2]).decode()


CASE_IDS = [case[0] for case in bad_cases("", "")]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_request_gets_4xx_naming_the_field(api, image_b64, case_id):
    _, body, status, needle = {c[0]: c for c in bad_cases(image_b64, small_png_b64())}[case_id]
    if isinstance(body, bytes):
        response = api.post("/segment", content=body, headers={"content-type": "application/json"})
    else:
        response = api.post("/segment", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert list(response.json()) == ["error"] and needle in error, error


def test_gateway_keeps_serving_after_bad_requests(api):
    for _ in range(3):
        assert api.post("/", content=b"{oops").status_code == 400
    result = ok_json(api.post("/", json={"image": small_png_b64(), "mode": "point", "point_coords": [[5, 5]]}))
    assert result["image_shape"] == [64, 64]


def test_concurrent_requests_get_their_own_answers(api, image_b64):
    points = [[[40 + 60 * i, 100 + 40 * i]] for i in range(6)]

    def post(point):
        return api.post("/", json={"image": image_b64, "mode": "point", "point_coords": point}).content

    sequential = [post(p) for p in points]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(post, points)) == sequential
    assert len(set(sequential)) > 1


def test_body_over_the_limit_gets_413(secured):
    auth = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    big = json.dumps({"image": "A" * (SMALL_LIMIT + 10)}).encode()
    response = secured.post("/", content=big, headers=auth)  # Content-Length says it is too large
    assert response.status_code == 413 and "limit" in response.json()["error"]
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # chunked: no Content-Length
    response = secured.post("/", content=chunks, headers=auth)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    ok = secured.post("/", json={"image": small_png_b64(), "mode": "point", "point_coords": [[5, 5]]}, headers=auth)
    assert ok.status_code == 200


def test_auth_token_required(secured):
    body = {"image": small_png_b64(), "mode": "point", "point_coords": [[5, 5]]}
    missing = secured.post("/", json=body)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert secured.post("/segment", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert secured.post("/", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert secured.get("/health").status_code == 200  # stays open


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_triton_unavailable_gives_503():
    app = create_app(f"127.0.0.1:{free_port()}", timeout_s=10)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
        response = client.post("/", json={"image": small_png_b64(), "mode": "point", "point_coords": [[5, 5]]})
        assert response.status_code == 503 and "cannot reach" in response.json()["error"]
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"


# ---------------------------------------------------------------- other routes


def test_health_ready(api):
    assert ok_json(api.get("/health")) == {"status": "ready"}


def test_openapi_lists_what_the_validator_accepts(api, image_b64):
    schema = ok_json(api.get("/openapi.json"))
    request = schema["paths"]["/segment"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(request["properties"]) == set(FIELD_NAMES) and request["anyOf"] == [
        {"required": ["image"]},
        {"required": ["image_id"]},
    ]
    assert request["properties"]["mode"]["enum"] == list(MODES)
    assert request["properties"]["mask_format"]["enum"] == list(MASK_FORMATS)
    every_field = {
        "image": image_b64,
        "mode": "text",
        "text": ["person"],
        "threshold": 0.3,
        "mask_threshold": 0.5,
        "point_coords": [[1, 2]],
        "point_labels": [1],
        "box_coords": [1, 2, 3, 4],
        "exemplar_boxes": [[10, 10, 100, 100]],
        "exemplar_labels": [1],
        "points_per_batch": 16,
        "points_per_side": 4,
        "pred_iou_thresh": 0.5,
        "stability_score_thresh": 0.5,
        "mask_format": "rle",
        "image_id": "every-field",
    }
    assert set(every_field) == set(FIELD_NAMES)
    assert ok_json(api.post("/", json=every_field))["concepts"] == ["person"]


def test_get_root_serves_the_page_to_browsers_and_an_index_to_api_clients(api):
    page = api.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="view"' in page.text
    assert "segment" in ok_json(api.get("/", headers={"accept": "application/json"}))
    assert "segment" in ok_json(api.get("/", headers={"accept": "*/*"}))  # curl, requests, httpx
    assert api.get("/web/app.js").status_code == 200
    assert "<table>" in api.get("/docs").text


def test_unknown_route_and_method_get_json_errors(api):
    missing = api.get("/nope")
    assert missing.status_code == 404 and "GET /nope" in missing.json()["error"]
    wrong = api.get("/segment")
    assert wrong.status_code == 405 and "error" in wrong.json()


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (37, 53), (0, 4), (4, 0), (96, 130)])
def test_bool_mask_json_equals_json_dumps(shape):
    """Both ways (run by run for masks of long runs, pixel by pixel for speckled ones) give json.dumps' text."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    blob = np.zeros(shape, bool)
    blob[shape[0] // 4 : shape[0] // 2, shape[1] // 3 :] = True
    masks = (rng.random(shape) > 0.5, rng.random(shape) > 0.995, blob, np.zeros(shape, bool), np.ones(shape, bool))
    for mask in masks + (np.asfortranarray(blob),):
        assert bool_mask_json(mask) == json.dumps(mask.tolist(), separators=(",", ":")).encode()


def test_image_size_reads_png_exif_orientation_only_where_there_is_an_exif_chunk(astronaut_png):
    """A PNG's eXIf chunk may follow the pixels (Pillow then decodes the image to read it): one there still
    turns the size; a PNG without one is never decoded, so a cut in its pixel data passes the header check
    (the orchestrator's decoder reports it)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: height and width swap
    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "PNG", exif=exif)
    assert b"eXIf" in buf.getvalue() and image_size(buf.getvalue()) == (40, 30)
    assert image_size(astronaut_png[: len(astronaut_png) // 2]) == (512, 512)


def test_non_finite_numbers_never_reach_the_json():
    assert _num(np.float32("nan")) is None and _num(np.float32(0.25)) == 0.25 and not math.isnan(_num(1.0))


def test_a_gateway_on_a_taken_port_says_so():
    """uvicorn ends its thread when it cannot bind: start() says which port, at once, not "within 30 s"."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"could not start on 127.0.0.1:{port} \\(port in use\\?\\)"):
            BackgroundServer(create_app("127.0.0.1:1"), port=port).start()
