"""The benchmark CLI end to end on the tiny model (smoke run; no timing asserts), and the reference pipeline."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from bench import ab
from bench import run as bench
from bench.args import PROTOCOLS, QUICK, parse_args
from bench.cli import main as cli_main
from bench.goals import ratio
from bench.reference import ReferencePipeline
from bench.report import _p5_lines, format_table
from bench.stats import COUNTS, STAT_KINDS, overhead
from bench.timing import busy_share, cpu_times, latency_stats
from bench.workloads import box_around_astronaut, click_points, load_images
from client.api import Sam3Client
from sam3_spec import MODES

SECTIONS = ("P1", "P2", "P3", "P4", "P5")


@pytest.fixture(scope="module")
def report(sam3_server, tiny_checkpoint, tmp_path_factory):
    """JSON report of `python -m bench --quick` against the session server, with the reference."""
    out = tmp_path_factory.mktemp("bench") / "report.json"
    code = bench.main(
        [
            "--grpc-url",
            sam3_server.grpc_url,
            "--http-url",
            sam3_server.http_address,
            "--metrics-url",
            sam3_server.metrics_url,
            "--checkpoint",
            str(tiny_checkpoint),
            "--quick",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return ReferencePipeline(tiny_checkpoint)


def _ordered(stats: dict) -> bool:
    return (
        stats["count"] > 0
        and stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    )


def test_report_echoes_config(report, tiny_checkpoint):
    config = report["config"]
    assert config["checkpoint"] == str(tiny_checkpoint)
    assert config["dims"]["image_size"] == 224 and config["dims"]["queries"] == 20
    assert config["model_config"]["vit"]["num_hidden_layers"] == 4
    assert set(config["images"]) == {"astronaut", "coffee"} and config["images"]["coffee"]["shape"] == [400, 600]
    assert config["versions"]["tritonserver"] and config["versions"]["tritonclient"] == "2.51.0"
    assert config["machine"]["cpu_count"] >= 1 and config["machine"]["cpu_model"]
    assert config["flags"]["quick"] is True and config["flags"]["concurrency"] == [1, 2]
    assert config["reference"]["dtype"] == "float32"
    assert all(0.0 <= t <= 1.0 for t in config["thresholds"].values())


def test_sweep_covers_every_cell_without_errors(report):
    cells = {(r["protocol"], r["mode"], r["concurrency"]) for r in report["sweep"]}
    assert cells == {(p, m, c) for p in PROTOCOLS for m in MODES for c in (1, 2)}
    for row in report["sweep"]:
        assert row["errors"] == 0, row["first_error"]
        assert row["count"] == row["concurrency"] * QUICK["repeats"]
        assert _ordered(row) and row["throughput_rps"] > 0


def test_goals_have_positive_ratios(report):
    goals = report["comparisons"]
    assert set(goals) == set(SECTIONS) | {"throughput", "P1box"}
    box = goals["P1box"]
    assert _ordered(box["server_cold"]) and _ordered(box["reference"]) and box["speedup"] > 0
    p1, p2, p3, p4, p5 = (goals[k] for k in SECTIONS)
    for stats in (
        p1["server_cold"],
        p1["server_warm"],
        p1["reference"],
        p2["server_cached"],
        p2["server_no_cache"],
        p2["reference"],
        p3["one_request"],
        p3["separate_requests"],
        p3["separate_requests_shared_image_id"],
    ):
        assert _ordered(stats)
    for value in (
        p1["speedup"],
        p1["speedup_warm"],
        p2["speedup"],
        p2["speedup_vs_no_cache"],
        p3["speedup"],
        p3["speedup_vs_shared_image_id"],
        p4["reduction"],
        p4["reduction_compact"],
    ):
        assert value is not None and value > 0
    assert p2["clicks"] == QUICK["clicks"] and len(p3["concepts"]) == 4
    assert _ordered(p3["single_concept_request"]) and p3["extra_concept_ms"] == pytest.approx(
        (p3["one_request"]["p50_ms"] - p3["single_concept_request"]["p50_ms"]) / 3, abs=1e-2
    )
    # the serial-stage bound: four separate requests vs one-concept + 3 × the per-concept stage compute
    assert p3["stage_ms_per_concept"] > 0  # more concepts, more concept/mask inference (Triton statistics)
    allowed = p3["single_concept_request"]["p50_ms"] + 3 * p3["stage_ms_per_concept"]
    assert p3["serial_stage_speedup"] == pytest.approx(p3["separate_requests"]["p50_ms"] / allowed, rel=1e-2)


def test_throughput_compares_concurrency_and_reports_batching(report):
    rates = report["comparisons"]["throughput"]
    assert set(rates) == {"cold", "warm", "warm_per_client"}
    for case in rates.values():
        assert case["concurrency"] == [1, QUICK["throughput_concurrency"]] and case["errors"] == 0
        assert all(r > 0 for r in case["rps"]) and case["gain"] > 0
        assert len(case["rounds"]) == QUICK["throughput_rounds"]  # medians of alternating rounds
        assert case["rps"] == [pytest.approx(float(np.median(rates)), abs=1e-3) for rates in zip(*case["rounds"])]
        gains = [high / one for one, high in case["rounds"]]
        assert min(gains) - 1e-3 <= case["gain"] <= max(gains) + 1e-3
        assert case["sam3_batch"][0] == 1.0 and case["sam3_batch"][1] >= 1.0  # one client: never batched
        assert all(0.0 < busy <= 1.0 for busy in case["cpu_busy"])  # server and clients run here: never idle
    assert rates["cold"]["vision_batch"][0] == 1.0  # cached images run no vision:
    assert rates["warm"]["vision_batch"] == rates["warm_per_client"]["vision_batch"] == [None, None]


def test_text_detections_match_reference_counts(report):
    """--threshold auto keeps --keep detections per concept; server and reference agree on the count."""
    for counts in report["comparisons"]["P1"]["detections"].values():
        assert counts["server"] == counts["reference"] == 3


def test_mask_bytes_and_overhead(report):
    p4, p5 = report["comparisons"]["P4"], report["comparisons"]["P5"]
    assert p4["total"]["masks"] > 0
    assert all(c["rle_bytes"] > 0 and c["json_bytes"] > c["json_compact_bytes"] for c in p4["cases"] if c["masks"])
    cells = {(p, m, c) for p in PROTOCOLS for m in MODES for c in ("cold", "warm")}
    assert len(p5["rows"]) == len(cells) and {(r["protocol"], r["mode"], r["cache"]) for r in p5["rows"]} == cells
    for row in p5["rows"]:
        if row["cache"] == "warm":  # an embedded image: no decode, no vision call
            assert row["breakdown"]["decode"] == 0 and row["components_ms"]["sam3_vision"] == 0
        else:
            assert row["breakdown"]["decode"] > 0 and row["components_ms"]["sam3_vision"] > 0
        assert row["requests"] == QUICK["repeats"] and row["consistent"]
        assert 0 < row["components_compute_ms"] <= row["orchestrator_compute_ms"] <= row["server_request_ms"]
        assert not row["overlapped"] and row["critical_compute_ms"] == row["components_compute_ms"]
        assert row["overhead_ms"] == pytest.approx(row["end_to_end_ms"] - row["components_compute_ms"], abs=1e-2)
        parts = row["breakdown"]
        assert set(parts) == {"queue", "decode", "bls", "post", "encode", "rest"}
        assert sum(parts.values()) == pytest.approx(row["overhead_ms"], abs=0.05)
        assert parts["queue"] >= 0 and parts["bls"] >= 0 and parts["post"] > 0
        if parts["bls"] > 0:  # the floor P5 measures against: the overhead as a multiple of the copies
            assert row["floor"]["overhead_x"] == pytest.approx(row["overhead_ms"] / parts["bls"], rel=1e-2, abs=0.01)
            assert row["floor"]["without_decode_x"] <= row["floor"]["overhead_x"]
    few, many = p5["per_mask"]["few"], p5["per_mask"]["many"]  # one concept on an embedded image
    assert few["requests"] == many["requests"] == QUICK["repeats"] and few["consistent"] and many["consistent"]
    assert many["threshold"] == 0 and many["masks"] > few["masks"]
    assert many["components_ms"]["sam3_vision"] == 0  # embedded: no vision call, no decode
    slope = (many["overhead_ms"] - few["overhead_ms"]) / (many["masks"] - few["masks"])
    assert p5["per_mask"]["per_extra_mask_ms"] == pytest.approx(slope, abs=1e-3)


def test_overlapped_component_calls_count_the_orchestrators_wait():
    """Two prompt instances ran auto mode's calls at once: 300 ms of prompt compute in a 200 ms request.
    The compute on the request's path is then the orchestrator's wait on its calls (150 ms)."""
    ms = 1_000_000
    zero = {k: (0, 0) for k in STAT_KINDS + COUNTS}
    delta = {
        "sam3": zero | {"success": (1, 210 * ms), "compute_infer": (1, 200 * ms), "queue": (1, 0)},
        "sam3_prompt": zero | {"compute_infer": (4, 300 * ms)},
    }
    row = overhead(delta, [0.220], {"compute": 0.150, "decode": 0.010, "post": 0.020})
    assert row["overlapped"] and row["components_compute_ms"] == 300 and row["critical_compute_ms"] == 150
    assert row["overhead_ms"] == pytest.approx(70) and row["breakdown"]["bls"] == 0 and row["floor"] is None
    assert "overlapped: 150.0 ms on the request's path" in "\n".join(_p5_lines({"rows": [row | P5_KEYS]}))


def test_overhead_is_reported_as_a_multiple_of_the_bls_copies():
    """P5's floor: 60 ms of overhead over 20 ms of BLS copies is 3×, and 2× once the 20 ms decode is left out."""
    ms = 1_000_000
    zero = {k: (0, 0) for k in STAT_KINDS + COUNTS}
    delta = {
        "sam3": zero | {"success": (1, 150 * ms), "compute_infer": (1, 140 * ms), "queue": (1, 0)},
        "sam3_vision": zero | {"compute_infer": (1, 100 * ms)},
    }
    row = overhead(delta, [0.160], {"compute": 0.120, "decode": 0.020})
    assert row["breakdown"]["bls"] == 20 and row["overhead_ms"] == pytest.approx(60)
    assert row["floor"] == {"bls_ms": 20, "overhead_x": 3.0, "without_decode_x": 2.0}
    assert "overhead = 3.0× the BLS copies (2.0× without decode)" in "\n".join(_p5_lines({"rows": [row | P5_KEYS]}))


P5_KEYS = {"protocol": "grpc", "mode": "auto"}


def test_table_lists_every_goal(report):
    text = format_table(report)
    assert all(f"{goal} " in text for goal in SECTIONS) and "ms per extra mask" in text
    assert text.count("\n") >= len(report["sweep"]) + 2


def test_cli_rejects_bad_flags(capsys):
    for argv in (
        [],
        ["--model", "tiny", "--grpc-url", "x:1"],
        ["--model", "tiny", "--modes", "video"],
        ["--model", "tiny", "--threshold", "2"],
        ["--model", "tiny", "--concurrency", "0"],
        ["--model", "tiny", "--photo-scale", "0"],
    ):
        with pytest.raises(SystemExit):
            parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_metrics_url_takes_host_port_like_the_other_urls():
    args = ["--grpc-url", "127.0.0.1:8001", "--metrics-url"]
    assert parse_args([*args, "127.0.0.1:8002"]).metrics_url == "http://127.0.0.1:8002/metrics"
    assert parse_args([*args, "https://h:9/m"]).metrics_url == "https://h:9/m"


def test_photo_scale_enlarges_the_photos_and_their_coordinates():
    """--photo-scale: camera-size JPEGs, with the clicks and the box on the same spots of the person."""
    plain, big = load_images(), load_images(2.5)
    assert plain["astronaut"].format == "PNG" and plain["astronaut"].shape == (512, 512)
    assert {i.format for i in big.values()} == {"JPEG"}
    assert big["astronaut"].shape == (1280, 1280) and big["coffee"].shape == (1000, 1500)
    decoded = np.asarray(Image.open(io.BytesIO(big["coffee"].data)))
    assert decoded.shape == (1000, 1500, 3)
    np.testing.assert_allclose(click_points(7, 2.5), np.asarray(click_points(7)) * 2.5)
    np.testing.assert_allclose(box_around_astronaut(2.5), np.asarray(box_around_astronaut()) * 2.5)
    assert parse_args(["--model", "tiny", "--photo-scale", "2.5"]).photo_scale == 2.5


def test_cpu_busy_share_from_proc_stat(tmp_path):
    """/proc/stat's cpu line: busy = user + nice + system + irq + softirq; idle, iowait and steal are not."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 5 5 30 0 0\ncpu0 1 2 3 4\n")
    before = cpu_times(stat)
    assert before == (160, 1000)
    stat.write_text("cpu  160 0 70 900 10 5 5 50 0 0\n")
    assert busy_share(before, cpu_times(stat)) == pytest.approx(80 / 200)
    assert cpu_times(tmp_path / "missing") is None and busy_share(None, before) is None
    assert busy_share(before, before) is None  # no time passed
    here = cpu_times()
    assert here is not None and 0 <= here[0] <= here[1]  # this machine's own /proc/stat reads


def test_latency_stats_and_ratio():
    stats = latency_stats([0.3, 0.1, 0.2, 0.4])
    assert stats["count"] == 4 and stats["p50_ms"] == pytest.approx(250.0) and _ordered(stats)
    assert latency_stats([]) == {"count": 0}
    assert ratio(2.0, 0.5) == 4.0 and ratio(None, 1.0) is None and ratio(1.0, 0) is None


def test_reference_text_shapes(reference, astronaut_png):
    boxes, scores, masks = reference.text(astronaut_png, ["person", "cat"], threshold=0.0)
    assert boxes.shape == (len(scores), 4) and masks.shape == (len(scores), 512, 512)
    assert masks.dtype == bool and scores.dtype == np.float32
    assert len(scores) == 2 * 20  # threshold 0: every query of both concepts (tiny: 20 queries)


def test_reference_point_and_box(reference, coffee_jpeg):
    mask, score, all_scores = reference.point(coffee_jpeg, [[300, 200], [100, 100]], [1, 0])
    assert mask.shape == (400, 600) and mask.dtype == bool
    assert all_scores.shape == (3,) and score == pytest.approx(float(all_scores.max()))
    mask, score, all_scores = reference.box(coffee_jpeg, [200, 100, 450, 350])
    assert mask.shape == (400, 600) and score == pytest.approx(float(all_scores.max()))


def test_p1_p2_against_the_bf16_autocast_reference(report):
    """The second reference (transformers under CPU bf16 autocast) beside the fp32 one."""
    config, goals = report["config"], report["comparisons"]
    assert config["reference_bf16"]["dtype"] == "bfloat16 autocast"
    for section in (goals["P1"], goals["P2"]):
        assert _ordered(section["reference_bf16"]) and section["speedup_bf16"] > 0
    assert goals["P1"]["speedup_warm_bf16"] > 0
    assert "vs reference bf16 autocast" in format_table(report)


def test_bf16_autocast_reference_returns_float32_results(tiny_checkpoint, astronaut_png):
    reference = ReferencePipeline(tiny_checkpoint, bf16=True)
    boxes, scores, masks = reference.text(astronaut_png, ["person"], threshold=0.0)
    assert boxes.dtype == scores.dtype == np.float32 and masks.shape == (20, 512, 512)
    mask, score, all_scores = reference.box(astronaut_png, [100, 30, 380, 500])
    assert mask.shape == (512, 512) and all_scores.dtype == np.float32


# ---------------------------------------------------------------- sam3-bench ab


def test_ab_compares_two_servers_round_by_round(sam3_server, tmp_path, capsys):
    """`sam3-bench ab` against the session server as both A and B (an A/A run: how far apart one server's
    two halves of the rounds land is the noise a real before/after must beat)."""
    out = tmp_path / "ab.json"
    url = sam3_server.grpc_url
    argv = ["ab", "--a", url, "--b", url, "--modes", "point,text", "--rounds", "3", "--warmup", "1"]
    assert cli_main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"point", "text"} and report["cache"] == "cold"
    for row in report["modes"].values():
        low, high = row["ratio_ci95"]
        assert row["rounds"] == 3 and row["a_p50_ms"] > 0 and row["b_p50_ms"] > 0
        assert low <= row["ratio_b_over_a"] <= high and 0 <= row["a_faster_share"] <= 1
    assert "B/A" in capsys.readouterr().out


def test_ab_measures_a_mode_under_another_modes_load(sam3_server, tmp_path, capsys):
    """`sam3-bench ab --background auto`: clicks timed in phases while two clients send auto requests."""
    out = tmp_path / "ab.json"
    url = sam3_server.grpc_url
    argv = ["ab", "--a", url, "--b", url, "--modes", "point", "--cache", "warm", "--rounds", "2", "--warmup", "0"]
    flags = ["--background", "auto", "--points-per-side", "4", "--per-phase", "2"]
    assert cli_main([*argv, *flags, "--json", str(out)]) == 0
    row = json.loads(out.read_text())["modes"]["point"]
    assert row["rounds"] == 2 and row["a_p50_ms"] > 0 and row["background"] == "2 x auto"
    assert row["a_background_rps"] > 0 and row["b_background_rps"] > 0
    assert "under 2 x auto" in capsys.readouterr().out


def test_a_failed_background_request_ends_ab_with_its_error():
    """A background client whose requests fail (here: no server behind its address) is reported, not hidden
    in a low rate."""
    load = ab.Background("127.0.0.1:1", lambda client, i: client.points(None, [[1, 1]], [1], image_id="x"), 1, 2.0, 0.0)
    with pytest.raises(RuntimeError, match="a background request failed"):
        with load:
            time.sleep(0.2)


def test_ab_paired_figures():
    """B twice as slow as A in every round but one: median ratio 2, A faster in 3 of 4 rounds."""
    row = ab.paired([0.1, 0.2, 0.1, 0.3], [0.2, 0.4, 0.05, 0.6])
    assert row["ratio_b_over_a"] == 2.0 and row["a_faster_share"] == 0.75
    assert row["a_p50_ms"] == pytest.approx(150.0) and row["b_p50_ms"] == pytest.approx(300.0)
    assert row["ratio_ci95"][0] <= 2.0 <= row["ratio_ci95"][1] and row["rounds"] == 4


def test_ab_rejects_bad_flags(capsys):
    for argv in (
        [],
        ["--a", "x:1"],
        ["--a", "x:1", "--b", "y:2", "--modes", "video"],
        ["--a", "x", "--b", "y", "--rounds", "1"],
        ["--a", "x", "--b", "y", "--background", "video"],
        ["--a", "x", "--b", "y", "--background", "auto", "--per-phase", "0"],
    ):
        with pytest.raises(SystemExit):
            ab.parse_args(argv)
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("cache", ["warm", "own"])
def test_ab_compares_throughput_with_several_clients(sam3_server, tmp_path, capsys, cache):
    """`sam3-bench ab --clients 3`: each round, three clients at once per side; paired wall time per request.
    ``--cache own``: each client clicks an image of its own, which the server then holds under that client's id."""
    out = tmp_path / "ab.json"
    url = sam3_server.grpc_url
    argv = ["ab", "--a", url, "--b", url, "--modes", "point", "--cache", cache, "--rounds", "2", "--warmup", "0"]
    assert cli_main([*argv, "--clients", "3", "--per-phase", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    row = report["modes"]["point"]
    assert report["cache"] == cache and row["rounds"] == 2 and row["clients"] == 3
    assert row["a_rps"] > 0 and row["b_rps"] > 0
    assert row["a_p50_ms"] == pytest.approx(1e3 / row["a_rps"], rel=0.5)  # the same rounds, two ways
    assert "at 3 clients" in capsys.readouterr().out
    if cache == "own":  # client 2's image is embedded under its own id: a click needs no image
        with Sam3Client(url, "grpc", reuse_uploads=False) as client:
            assert len(client.points(None, [[100.0, 100.0]], [1], image_id="bench-client-2-astronaut").scores) == 1
    with pytest.raises(SystemExit):
        ab.parse_args(["--a", url, "--b", url, "--clients", "2", "--background", "auto"])
    with pytest.raises(SystemExit):
        ab.parse_args(["--a", url, "--b", url, "--cache", "own"])  # own images need --clients
