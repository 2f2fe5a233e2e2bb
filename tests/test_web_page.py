"""The web page end to end: headless Chromium loads it from the gateway, segments, draws masks.

Needs Debian's Chromium (``apt-get install -y chromium`` → /usr/bin/chromium) and the Python
``playwright`` package (its own browser download is NOT used: we launch /usr/bin/chromium).
Screenshots go to $SAM3_TEST_SCREENSHOTS (default: the test's tmp dir).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sam3_spec import SAM3_INPUTS

SPECS = {t.name: t for t in SAM3_INPUTS}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium (Debian: apt-get install -y chromium)"
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (uses /usr/bin/chromium; no `playwright install` needed)"
)
STATUS_DONE = (
    "() => { const s = document.getElementById('status'), e = document.getElementById('error');"
    " return !e.hidden || s.textContent.includes(' masks drawn'); }"
)


@pytest.fixture(scope="module")
def page(gateway_url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(gateway_url + "/")
        yield page
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture()
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("SAM3_TEST_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def reset_status(page) -> None:
    page.evaluate("document.getElementById('status').textContent = 'waiting'")


def run_and_wait(page, click: str | None = "#run") -> dict:
    """Press Segment (or not: call reset_status before the action), wait until masks are drawn or
    an error shows; the page's report."""
    if click:
        reset_status(page)
        page.click(click)
    page.wait_for_function(STATUS_DONE, timeout=120_000)
    return page.evaluate("""() => ({error: document.getElementById('error').hidden ? '' :
        document.getElementById('error').textContent, status: document.getElementById('status').textContent,
        masks: Number(document.getElementById('status').dataset.masks),
        pixels: Number(document.getElementById('status').dataset.pixels || 0),
        items: document.querySelectorAll('#results li').length})""")


def canvas_png(page) -> bytes:
    url = page.evaluate("document.getElementById('view').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def api_count(gateway_url: str, image: bytes, body: dict) -> int:
    payload = {"image": base64.b64encode(image).decode(), "mask_format": "rle", **body}
    with httpx.Client(trust_env=False, timeout=120) as client:
        return client.post(gateway_url + "/segment", json=payload).json()["count"]


def test_page_takes_its_number_defaults_and_ranges_from_the_spec(page):
    """The inputs are filled from /openapi.json, i.e. from sam3_spec: the page writes no default itself."""
    page.evaluate("() => window.sam3.defaultsLoaded")
    inputs = {"threshold": "threshold", "points_per_side": "pps", "pred_iou_thresh": "iou"}
    inputs["stability_score_thresh"] = "stability"
    for name, element in inputs.items():
        spec = SPECS[name]
        shown = page.evaluate(
            f"() => {{ const e = document.getElementById('{element}'); return [e.value, e.min, e.max]; }}"
        )
        assert float(shown[0]) == spec.default and [float(v) for v in shown[1:]] == list(spec.bounds), (name, shown)


def test_page_segments_text_concepts_and_draws_masks(page, gateway_url, astronaut_png, screenshots):
    assert page.title() == "SAM3 segmentation"
    page.set_input_files("#file", files=[{"name": "astronaut.png", "mimeType": "image/png", "buffer": astronaut_png}])
    page.wait_for_function("document.getElementById('status').textContent.includes('512×512')")
    before = canvas_png(page)
    page.fill("#text", "person, cat")
    page.fill("#threshold", "0.15")
    report = run_and_wait(page)
    page.screenshot(path=str(screenshots / "web_text.png"), full_page=True)
    assert not report["error"], report
    expected = api_count(gateway_url, astronaut_png, {"mode": "text", "text": ["person", "cat"], "threshold": 0.15})
    assert report["masks"] == report["items"] == expected >= 1
    assert report["pixels"] > 0 and canvas_png(page) != before


def test_page_decodes_coco_rle_like_pycocotools(page):
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (7, 5), (64, 96)]:
        mask = (rng.random(shape) > 0.7) | np.pad(
            np.ones((shape[0] // 2, shape[1] // 2), bool),
            ((0, shape[0] - shape[0] // 2), (0, shape[1] - shape[1] // 2)),
        )
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        decoded = page.evaluate(
            "rle => Array.from(window.sam3.decodeRle(rle))", {"size": list(shape), "counts": rle["counts"].decode()}
        )
        np.testing.assert_array_equal(np.array(decoded, bool).reshape(shape), mask)


def test_page_click_segments_one_object(page, screenshots):
    box = page.locator("#view").bounding_box()
    reset_status(page)
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.35)
    report = run_and_wait(page, click=None)
    page.screenshot(path=str(screenshots / "web_point.png"), full_page=True)
    assert not report["error"], report
    assert page.input_value("#mode") == "point" and report["masks"] == 1 and report["pixels"] > 0


def test_page_shows_the_error_of_a_bad_request(page):
    page.select_option("#mode", "text")
    page.fill("#text", "")
    page.click("#clear")
    report = run_and_wait(page)
    assert "422" in report["error"] and "`text`" in report["error"], report


def test_page_sample_image_and_box(page, screenshots):
    page.click("#sample")
    page.wait_for_function("document.getElementById('status').textContent.includes('640×480')")
    page.select_option("#mode", "box")
    box = page.locator("#view").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    reset_status(page)
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.8, steps=5)
    page.mouse.up()
    report = run_and_wait(page, click=None)
    page.screenshot(path=str(screenshots / "web_box.png"), full_page=True)
    assert not report["error"], report
    assert report["masks"] == 1 and report["pixels"] > 0


def test_page_sends_its_image_once_then_only_its_id(page):
    """The first request for an image carries it with an image_id, the next clicks the id alone (no upload);
    when the server no longer has the id (evicted, restarted), the page sends the image again by itself."""
    bodies = []

    def record(request):
        if request.method == "POST" and request.url.endswith("/segment"):
            bodies.append(request.post_data_json)

    page.on("request", record)
    try:
        page.click("#sample")
        page.wait_for_function("document.getElementById('status').textContent.includes('640×480')")
        page.select_option("#mode", "point")
        box = page.locator("#view").bounding_box()
        for fx in (0.4, 0.6):
            reset_status(page)
            page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * 0.5)
            assert not run_and_wait(page, click=None)["error"]
        page.evaluate("() => { window.sam3.state.imageId = 'page-lost-by-the-server'; }")  # still imageSent
        reset_status(page)
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3)
        report = run_and_wait(page, click=None)
    finally:
        page.remove_listener("request", record)
    assert not report["error"] and report["masks"] == 1, report
    assert [("image" in b, b["image_id"]) for b in bodies] == [
        (True, bodies[0]["image_id"]),
        (False, bodies[0]["image_id"]),
        (False, "page-lost-by-the-server"),
        (True, "page-lost-by-the-server"),
    ]
