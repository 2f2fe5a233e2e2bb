"""Behaviour of the served `sam3` model: caches, per-request errors, readiness, metrics.

Everything goes through the real Triton server (fixture ``sam3_server``) with tritonclient
(statistics, readiness) and the client library (requests).
"""

from __future__ import annotations

import io
import struct
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from client.api import Sam3Client, Sam3Error


@pytest.fixture(scope="module")
def triton(sam3_server):
    c = grpcclient.InferenceServerClient(sam3_server.grpc_url)
    yield c
    c.close()


def executions(triton, model: str) -> int:
    """How many times Triton executed ``model`` so far (per-model statistics)."""
    stats = triton.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0))


def metric(metrics_url: str, name: str, **labels) -> float:
    """Value of one Prometheus sample on Triton's /metrics (0 when absent), once the orchestrator's metrics
    have stopped changing: it publishes them from a thread just after it answers (metrics.py)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in settled_metrics(metrics_url).splitlines():
        if line.startswith(name + "{") and want in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def settled_metrics(metrics_url: str, pause_s: float = 0.1, limit_s: float = 5.0) -> str:
    """Triton's /metrics text once two reads ``pause_s`` apart agree on every sam3_ sample (at most
    ``limit_s``; the publisher needs milliseconds)."""

    def sam3_lines(text: str) -> list:
        return [line for line in text.splitlines() if line.startswith("sam3_")]

    deadline, text = time.monotonic() + limit_s, urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    while time.monotonic() < deadline:
        time.sleep(pause_s)
        last, text = text, urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        if sam3_lines(text) == sam3_lines(last):
            break
    return text


def test_second_click_on_same_image_skips_the_vision_encoder(client, triton, sam3_server, coffee_jpeg):
    client.points(coffee_jpeg, [[100, 100]], [1])
    before, hits = (
        executions(triton, "sam3_vision"),
        metric(sam3_server.metrics_url, "sam3_cache_hits_total", cache="image"),
    )
    second = client.points(coffee_jpeg, [[300, 200]], [1])
    assert executions(triton, "sam3_vision") == before, "the cached embedding should be reused"
    assert len(second) == 1
    assert metric(sam3_server.metrics_url, "sam3_cache_hits_total", cache="image") == hits + 1


def test_the_prompt_head_runs_in_the_orchestrators_process(client, triton, sam3_server, coffee_jpeg):
    """The session server's default: a click's prompt head runs inside sam3 (local_components), not through its
    Triton model, and the metrics count the call and its compute."""
    client.points(coffee_jpeg, [[100, 100]], [1], image_id="local-head")
    url = sam3_server.metrics_url
    before = executions(triton, "sam3_prompt")
    calls, seconds = (metric(url, f"sam3_local_{m}_total", model="sam3_prompt") for m in ("calls", "compute_seconds"))
    client.points(None, [[300, 200]], [1], image_id="local-head")
    assert executions(triton, "sam3_prompt") == before
    assert metric(url, "sam3_local_calls_total", model="sam3_prompt") == calls + 1
    assert metric(url, "sam3_local_compute_seconds_total", model="sam3_prompt") > seconds


def test_image_id_reuses_the_embedding_of_the_first_request(client, triton, astronaut_png):
    client.points(astronaut_png, [[10, 10]], [1], image_id="astro-1")
    before = executions(triton, "sam3_vision")
    seg = client.points(astronaut_png, [[200, 200]], [1], image_id="astro-1")
    assert executions(triton, "sam3_vision") == before and seg.image_shape == (512, 512)


def test_a_cached_image_id_needs_no_upload(client, triton, coffee_jpeg):
    first = client.boxes(coffee_jpeg, [[100, 80, 400, 300]], image_id="coffee-upload-once")
    before = executions(triton, "sam3_vision")
    again = client.boxes(None, [[100, 80, 400, 300]], image_id="coffee-upload-once")
    assert executions(triton, "sam3_vision") == before and again.image_shape == (400, 600)
    assert (again.masks == first.masks).all()
    with pytest.raises(Sam3Error) as info:
        client.points(None, [[10, 10]], [1], image_id="never-sent")
    assert info.value.status == 400 and "not in the embedding cache" in info.value.message


def test_text_features_are_cached_per_concept(client, triton, coffee_jpeg):
    client.text(coffee_jpeg, ["mug", "table"], threshold=0.9)
    before = executions(triton, "sam3_text")
    client.text(coffee_jpeg, ["table", "mug"], threshold=0.9)
    assert executions(triton, "sam3_text") == before


def _same(a, b) -> bool:
    """Two Segmentations hold the same detections (scores, boxes, labels, masks)."""
    return (
        len(a) == len(b)
        and np.allclose(a.scores, b.scores, atol=1e-5)
        and np.allclose(a.boxes, b.boxes, atol=1e-3)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.masks, b.masks)
    )


def statistics(triton, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model``, once settled: Triton records a request's
    statistics just after answering it, so read until two reads 0.1 s apart agree (≤ 5 s)."""

    def read():
        stats = triton.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    last = read()
    for _ in range(50):
        time.sleep(0.1)
        now = read()
        if now == last:
            return now
        last = now
    return last


def test_concurrent_mixed_requests_batch_and_equal_their_serial_results(client, triton, astronaut_png, coffee_jpeg):
    """Mixed modes at once, one of them bad: only that one fails, the others equal their serial answers, and
    Triton counted each. (Whether they share an ``execute`` depends on timing: ``execute`` returns at once for
    text and auto; the next test shows requests queued meanwhile running together.)"""
    calls = [
        lambda: client.text(astronaut_png, "person", threshold=0.2),
        lambda: client.points(coffee_jpeg, [[50, 60]], [1]),
        lambda: client.points(coffee_jpeg, [[5000, 60]], [1]),  # outside the 600 px wide image
        lambda: client.boxes(astronaut_png, [[10, 20, 300, 400]]),
        lambda: client.text(coffee_jpeg, ["cup", "saucer"], threshold=0.2),
        lambda: client.auto(coffee_jpeg, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0),
        lambda: client.points(astronaut_png, [[200, 200], [300, 100]], [1, 0], image_id="mixed-astro"),
        lambda: client.text(coffee_jpeg, "cup", threshold=0.2, mask_format="bool"),
    ]
    serial = [_result(call) for call in calls]
    before = statistics(triton, "sam3")
    with ThreadPoolExecutor(len(calls)) as pool:
        slow = pool.submit(client.auto, coffee_jpeg, points_per_side=16)  # keeps sam3 busy: the rest queue up
        futures = [pool.submit(_result, call) for call in calls]
        slow.result()
    together = [f.result() for f in futures]
    assert [isinstance(r, Exception) for r in together] == [False, False, True, False, False, False, False, False]
    error = together[2]
    assert isinstance(error, Sam3Error) and error.status == 400 and "outside the image" in error.message
    assert all(_same(a, b) for a, b in zip(serial, together) if not isinstance(a, Exception))
    inferences, _ = (after - old for after, old in zip(statistics(triton, "sam3"), before))
    assert inferences == len(calls) + 1  # Triton counts every request, the bad one too
    assert triton.is_server_ready() and triton.is_model_ready("sam3")


def test_a_click_is_answered_while_a_slow_request_still_runs(client, coffee_jpeg):
    """``execute`` hands its batch on and every request is answered when it is done: a click sent while an
    auto request runs comes back first. Before, the click shared the auto request's execute or waited for it
    to end, and was answered after it."""
    client.points(coffee_jpeg, [[50, 60]], [1], image_id="head-of-line")  # embedded: the click is quick
    done = {}

    def timed(name, call):
        call()
        done[name] = time.perf_counter()

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(timed, "auto", lambda: client.auto(None, image_id="head-of-line", points_per_side=32))
        time.sleep(0.05)
        quick = pool.submit(timed, "click", lambda: client.points(None, [[80, 90]], [1], image_id="head-of-line"))
        slow.result(), quick.result()
    assert done["click"] < done["auto"], done


def test_auto_requests_queued_behind_a_slow_one_run_together(client, triton, coffee_jpeg):
    """A lane (text, or auto) runs one batch at a time of whatever queued meanwhile: four auto requests sent
    while a slow one runs wait in the auto lane and then run as one batch, so their four never-seen images
    take fewer sam3_vision calls than four."""
    images = [_png(seed) for seed in range(4)]
    with ThreadPoolExecutor(5) as pool:
        # embedded (the slow one needs no vision), from a pool thread: its connection is up before the clock runs
        pool.submit(client.points, coffee_jpeg, [[50, 60]], [1], image_id="lane-slow").result()
        before = statistics(triton, "sam3_vision")
        slow = pool.submit(client.auto, None, image_id="lane-slow", points_per_side=64)
        time.sleep(0.1)  # the slow request runs (4,096 clicks: 1.1-1.4 s on the tiny model)
        queued = [pool.submit(client.auto, image, points_per_side=2) for image in images]
        assert not slow.done(), "the slow request ended before the others were sent: nothing could queue"
        results = [f.result() for f in queued]
        slow.result()
    images_encoded, vision_calls = (after - old for after, old in zip(statistics(triton, "sam3_vision"), before))
    assert images_encoded == 4 and vision_calls < 4, (images_encoded, vision_calls)
    assert all(r.masks.shape[1:] == (64, 48) for r in results), [r.masks.shape for r in results]


def test_a_request_whose_client_left_while_it_waited_in_its_lane_is_not_run(sam3_server, client, triton, coffee_jpeg):
    """An auto (or text) request whose client gives up while it waits in its lane is answered CANCELLED and
    never runs, as Triton drops a cancelled request from its own queue: its never-seen image is not encoded."""
    # the client gives up after 0.25 s, well inside the slow request's 1.1-1.4 s (three one-thread prompt runners)
    with Sam3Client(sam3_server.grpc_url, protocol="grpc", timeout_s=0.25) as impatient, ThreadPoolExecutor(1) as pool:
        # embedded (the slow one needs no vision), from the pool's thread: its connection is up before the clock runs
        pool.submit(client.points, coffee_jpeg, [[50, 60]], [1], image_id="lane-cancel").result()
        before = statistics(triton, "sam3_vision")
        slow = pool.submit(client.auto, None, image_id="lane-cancel", points_per_side=64)  # 4,096 clicks: seconds
        time.sleep(0.1)  # the slow request runs: the auto lane is busy
        with pytest.raises(Sam3Error) as gave_up:
            impatient.auto(_png(99), points_per_side=2)
        assert gave_up.value.status == 504, gave_up.value
        assert not slow.done(), "the slow request ended before the other one gave up: nothing waited in the lane"
        slow.result()
    assert statistics(triton, "sam3_vision") == before  # the abandoned request's image was never encoded


def test_a_request_whose_client_left_while_it_ran_stops(sam3_server, client, coffee_jpeg):
    """A running auto request whose client gives up stops at the orchestrator's next poll (0.2 s): most of its
    head calls never run. Before, it ran to its end (seconds of CPU for nobody)."""
    client.points(coffee_jpeg, [[50, 60]], [1], image_id="run-cancel")  # embedded: the auto request starts at once
    before = metric(sam3_server.metrics_url, "sam3_local_calls_total", model="sam3_prompt")
    with Sam3Client(sam3_server.grpc_url, protocol="grpc", timeout_s=0.25) as impatient:
        with pytest.raises(Sam3Error) as gave_up:
            impatient.auto(None, image_id="run-cancel", points_per_side=64)  # 4,096 points: 256 head calls
    assert gave_up.value.status == 504, gave_up.value
    time.sleep(1.0)  # the calls running when the poll found the client gone end
    client.points(None, [[60, 70]], [1], image_id="run-cancel")  # served, and publishes the calls counted since
    ran = metric(sam3_server.metrics_url, "sam3_local_calls_total", model="sam3_prompt") - before - 1
    # the client left after 0.25 s of a request that runs 1.1-1.4 s with three one-thread runners; the poll
    # stops it within 0.2 s more: 73-80 of its 256 calls ran (with a 0.5 s timeout, 138 once)
    assert 0 < ran < 4096 // 16 // 2, ran


def _png(seed: int) -> bytes:
    """A never-seen random PNG, 64 px high and 48 wide."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _result(call):
    try:
        return call()
    except Sam3Error as err:
        return err


@pytest.mark.parametrize("mode", ["point", "box"])
def test_mask_threshold_at_its_bounds_is_served(client, coffee_jpeg, mode):
    """0 and 1 are valid mask thresholds in every mode: all pixels / none, never a server error."""
    prompt = (
        {"points": [[300.0, 200.0]], "point_labels": [1]}
        if mode == "point"
        else {"boxes": [[100.0, 80.0, 400.0, 300.0]]}
    )
    everything = client.segment(coffee_jpeg, mode, mask_threshold=0.0, **prompt)
    nothing = client.segment(coffee_jpeg, mode, mask_threshold=1.0, **prompt)
    assert everything.masks.all() and not nothing.masks.any()
    np.testing.assert_array_equal(everything.boxes, [[0, 0, 599, 399]])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares width×height (a decompression-bomb probe)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "image, fields, expected",
    [
        (b"definitely not an image", {"text": ["cat"]}, "image"),
        (png_header(60000, 60000), {"text": ["cat"]}, "limit"),
        (None, {"mode": "lasso"}, "unknown mode"),
        (None, {"mode": "text"}, "needs `text`"),
        (None, {"mode": "point", "points": [[float("nan"), 3.0]], "point_labels": [1]}, "NaN"),
        (None, {"mode": "point", "points": [[3.0, 3.0]], "point_labels": [7]}, "point_labels"),
        (None, {"mode": "box", "boxes": [[50.0, 50.0, 10.0, 10.0]]}, "x1 < x0"),
        (None, {"mode": "text", "text": ["cat"], "threshold": 3.0}, "threshold"),
        (None, {"mode": "text", "text": [""]}, "empty"),
        (None, {"mode": "point", "points": [[1.0, 1.0]] * 40, "point_labels": [1] * 40}, "too many points"),
    ],
)
def test_bad_requests_get_a_clear_400(client, triton, coffee_jpeg, image, fields, expected):
    fields = dict(fields)
    mode = fields.pop("mode", "text")
    with pytest.raises(Sam3Error) as info:
        client.segment(coffee_jpeg if image is None else image, mode, **fields)
    assert info.value.status == 400 and expected.lower() in info.value.message.lower(), info.value.message
    assert triton.is_server_ready()


def test_rle_and_bool_mask_formats_agree(client, astronaut_png):
    rle = client.boxes(astronaut_png, [[100, 30, 380, 500]])
    raw = client.boxes(astronaut_png, [[100, 30, 380, 500]], mask_format="bool")
    assert raw.masks.shape == (1, 512, 512) and np.array_equal(rle.masks, raw.masks)


def test_metrics_count_every_answered_request_of_a_batch(client, sam3_server, coffee_jpeg):
    """The orchestrator adds its metrics once per execute, from its publisher thread (each increment is an IPC
    to Triton): seven concurrent clicks on one embedded image count seven point requests with their seconds;
    a request that fails counts nowhere."""
    url, image_id = sam3_server.metrics_url, "metrics-batch"
    client.points(coffee_jpeg, [[100, 100]], [1], image_id=image_id)  # embedded: the clicks below are quick
    names = ("sam3_requests_total", "sam3_request_seconds_total")
    before = [metric(url, name, mode="point") for name in names] + [
        metric(url, "sam3_phase_seconds_total", phase="compute")
    ]
    with ThreadPoolExecutor(8) as pool:
        clicks = [pool.submit(client.points, None, [[50 + 40 * i, 120]], [1], image_id=image_id) for i in range(7)]
        bad = pool.submit(client.points, None, [[10, 10]], [1], image_id="metrics-never-sent")
    assert all(len(c.result()) == 1 for c in clicks)
    with pytest.raises(Sam3Error):
        bad.result()
    after = [metric(url, name, mode="point") for name in names] + [
        metric(url, "sam3_phase_seconds_total", phase="compute")
    ]
    assert after[0] == before[0] + 7
    assert after[1] > before[1] and after[2] > before[2]
