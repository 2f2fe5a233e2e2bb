"""``sam3-triton gpu-check`` on a machine without a GPU: the refusal, and every part that runs without one.

The GPU stages (engines, fresh parity, stage timing, Triton e2e) need an NVIDIA GPU and are
not run here. What is tested for real: the command stops at once with a clear message and
exit code 2; the plan of stages × batches from the spec; parity/latency rows, verdict,
table and JSON report; the decisions taken from the machine probe.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import trt
from sam3_spec import COMPONENTS, ComponentSpec, Profile, TensorSpec, component_specs
from server.gpu_check import plan, preflight, report
from server.gpu_check.cli import options_from
from server.gpu_check.e2e import synthetic_image, throughput, time_requests
from server.gpu_check.run import CannotRunError, Options, install
from server.gpu_check.run import preflight as run_preflight
from tests.gpu import NO_GPU, REAL, gpu_present

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- the command where there is no GPU


def _run(args, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAM3_TRITON_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@NO_GPU
@pytest.mark.parametrize(
    "args",
    [
        ["-m", "server.cli", "gpu-check"],
        ["-m", "server.cli", "gpu-check", "--model", "full", "--json", "r.json"],
        ["-m", "server.gpu_check", "--model", "bench"],
    ],
)
def test_gpu_check_stops_with_what_is_missing(tmp_path, args):
    result = _run(args, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error: gpu-check cannot run here:")
    assert "no NVIDIA driver" in result.stderr and "libcuda.so.1" in result.stderr
    assert trt.TENSORRT_PIP in result.stderr and "modal run modal_triton.py::verify" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no report, no cache, nothing exported


def test_gpu_check_help_lists_its_flags(tmp_path):
    result = _run(["-m", "server.cli", "gpu-check", "--help"], tmp_path)
    assert result.returncode == 0
    for flag in ("--model", "{bench,full}", "--json", "--batches", "--no-install", "--no-e2e"):
        assert flag in result.stdout


def test_bad_arguments_are_usage_errors(tmp_path):
    result = _run(["-m", "server.cli", "gpu-check", "--model", "huge"], tmp_path)
    assert result.returncode == 2 and "invalid choice: 'huge'" in result.stderr and "Traceback" not in result.stderr
    result = _run(["-m", "server.cli", "gpu-check", "--batches", "0,4"], tmp_path)
    assert result.returncode == 2 and "--batches must be positive integers" in result.stderr


# ---------------------------------------------------------------- plan of stages and batches (from the spec)


def test_timing_plan_follows_the_spec():
    runs = plan.timing_plan(component_specs(REAL))
    assert [(r.component, r.batch) for r in runs] == [(c, b) for c in COMPONENTS for b in plan.BATCHES]
    by = {(r.component, r.batch): r for r in runs}
    assert by["vision", 4].sizes == {"batch": 4}
    assert by["vision", 8].sizes == {"batch": 8}
    assert plan.timing_plan(component_specs(REAL), (16,))[0].note == "batch=16 outside the profile 1..8"
    assert by["text", 8].sizes == {"batch": 8}
    assert by["concept", 8].sizes == {"prompts": 8, "boxes": 1}  # lead axis = prompts, boxes at opt
    assert by["prompt", 4].sizes == {"objects": 4, "points": 2}  # lead axis = objects, points at opt


def test_plan_of_a_component_without_a_batch_axis():
    spec = ComponentSpec(
        name="fixed",
        inputs=(TensorSpec("x", "FP32", (1, 3)),),
        outputs=(TensorSpec("y", "FP32", (1, 3)),),
        profiles={},
        parity_sizes=({},),
    )
    runs = plan.timing_plan({"fixed": spec}, (1, 4))
    assert [(r.sizes, r.note) for r in runs] == [({}, ""), (None, "no batch axis")]
    growing = ComponentSpec(
        name="g",
        inputs=(TensorSpec("x", "FP32", ("n", 3)),),
        outputs=(TensorSpec("y", "FP32", ("n", 3)),),
        profiles={"n": Profile(2, 2, 6)},
        parity_sizes=({"n": 2},),
    )
    assert plan.stage_sizes(growing, 1).note == "n=1 outside the profile 2..6"


def test_parse_batches():
    assert plan.parse_batches("1, 4,8") == (1, 4, 8)
    for bad in ("", "0", "a,b", "-1"):
        with pytest.raises(ValueError, match="positive integers"):
            plan.parse_batches(bad)


# ---------------------------------------------------------------- parity gate, rows, verdict, table, JSON

GATE = trt.Tolerance(min_cosine=plan.MIN_COSINE, atol=0.0)


def _rows(cosine_noise: float) -> list[dict]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1000)
    b = a + cosine_noise * rng.standard_normal(1000)
    return [trt.parity_row({"batch": 1}, name, trt.parity_metrics(a, b), GATE) for name in ("fpn_0", "track_2")]


def test_gpu_check_gate_is_cosine_per_output():
    good, bad = _rows(0.01), _rows(0.1)
    assert all(r["ok"] for r in good) and good[0]["cosine"] >= 0.999
    assert not any(r["ok"] for r in bad) and 0.99 < bad[0]["cosine"] < 0.999  # fine for fp16's atol, not for gpu-check
    assert bad[0]["max_abs"] > 0.1
    summary = report.parity_summary(bad)
    assert (
        not summary["ok"]
        and summary["worst"].endswith("@ batch=1")
        and summary["max_abs"] == max(r["max_abs"] for r in bad)
    )
    assert report.parity_summary([])["ok"] is False


def test_stage_rows_and_throughput():
    run = plan.StageRun("vision", 4, {"batch": 4})
    row = report.stage_row(run, trt.latency_summary([0.010, 0.020, 0.030]))
    assert row["p50_ms"] == pytest.approx(20.0) and row["items_per_s"] == pytest.approx(200.0)
    skipped = report.stage_row(plan.StageRun("vision", 8, None, "batch=8 outside the profile 1..4"), None)
    assert skipped["p50_ms"] is None and skipped["items_per_s"] is None


def test_targets():
    assert report.target_status({"ran": False}) == {
        "text_p50_ms": {"target": 15.0, "measured": None, "met": None},
        "images_per_s": {"target": 120.0, "measured": None, "met": None},
    }
    status = report.target_status({"ran": True, "text": {"p50_ms": 12.0}, "throughput": {"images_per_s": 100.0}})
    assert status["text_p50_ms"]["met"] is True and status["images_per_s"]["met"] is False


def _report(engines: dict, e2e: dict | None = None) -> dict:
    e2e = e2e or {"ran": False, "reason": "no tritonserver at /opt/tritonserver/bin/tritonserver"}
    runs = plan.timing_plan(component_specs(REAL), (1, 16))
    stages = [report.stage_row(r, trt.latency_summary([0.004, 0.005]) if r.sizes else None) for r in runs]
    out = {
        "tool": "sam3-triton gpu-check",
        "model": "bench",
        "environment": {"gpu": "NVIDIA H200", "driver": "570.1", "tensorrt": trt.TENSORRT_VERSION},
        "engines": engines,
        "stages": stages,
        "e2e": e2e,
        "targets": report.target_status(e2e),
    }
    out["ok"], out["problems"] = report.verdict(out)
    return out


def test_verdict_and_table():
    engines = {
        "vision": {"built_precision": "fp16", "rules": "explicit", "build_seconds": 41.0, "parity": _rows(0.01)},
        "text": {"built_precision": "fp16", "rules": "fused", "build_seconds": 9.0, "parity": _rows(0.01)},
    }
    ok = _report(engines)
    assert ok["ok"] and ok["problems"] == []
    table = report.format_table(ok)
    assert "gpu-check: model bench on NVIDIA H200" in table and "fp16/explicit" in table
    assert "batch=16 outside the profile 1..8" in table and "result: ok" in table
    assert "end-to-end through Triton: not run (no tritonserver" in table
    assert "text_p50_ms: 15.0 → measured - (not measured)" in table and plan.REFERENCE in table
    bad = _report({**engines, "text": {**engines["text"], "parity": _rows(0.1)}, "concept": {"error": "parse error"}})
    assert not bad["ok"] and len(bad["problems"]) == 2
    table = report.format_table(bad)
    assert "result: FAILED" in table and "concept: no engine (parse error)" in table and " FAIL" in table
    broken = _report(engines, {"ran": False, "reason": "tritonserver did not start", "error": "exit 1"})
    assert broken["problems"] == ["end-to-end through Triton failed: exit 1"]


def test_table_with_e2e_figures():
    e2e = {
        "ran": True,
        "text": trt.latency_summary([0.010, 0.012]),
        "point": trt.latency_summary([0.005]),
        "throughput": {"images_per_s": 150.0, "concurrency": 8, "requests": 64, "seconds": 0.43},
    }
    table = report.format_table(_report({}, e2e))
    assert "text   p50 11.00 ms" in table and "150.0 images/s at concurrency 8" in table
    assert "images_per_s: 120.0 → measured 150.00 (met)" in table


def test_json_report_roundtrip(tmp_path):
    data = _report({"vision": {"built_precision": "fp32", "rules": "none", "parity": _rows(0.0)}})
    path = report.write_report(tmp_path / "out" / "gpu-check.json", data)
    assert json.loads(path.read_text()) == json.loads(json.dumps(data))
    assert [p.name for p in path.parent.iterdir()] == ["gpu-check.json"]


# ---------------------------------------------------------------- the machine probe and its decisions

GPU_MACHINE = {
    "system": "Linux",
    "gpus": 1,
    "gpu": "NVIDIA H200",
    "driver": "570.124.06",
    "driver_cuda": [12, 8],
    "driver_error": None,
    "tensorrt": trt.TENSORRT_VERSION,
    "onnxruntime": "1.20.1",
    "onnxruntime_gpu": True,
    "torch_cuda": "12.8",
    "export_missing": [],
    "triton_binary": trt.TRITON_BINARY,
    "triton_backends": ["onnxruntime", "python", "tensorrt"],
}


def test_probe_of_this_machine():
    env = preflight.probe()
    json.dumps(env)  # JSON-ready
    assert env["system"] == "Linux" and env["torch_cuda"] == trt.torch_cuda_version()
    if not gpu_present():
        assert env["gpus"] == 0 and "no NVIDIA driver" in env["driver_error"]
        assert preflight.blocking_problems(env) == [env["driver_error"]]


def test_blocking_problems():
    assert preflight.blocking_problems(GPU_MACHINE) == []
    mac = {**GPU_MACHINE, "system": "Darwin", "driver_error": "no NVIDIA driver here (...)", "gpus": 0}
    assert preflight.blocking_problems(mac) == [
        "gpu-check needs Linux with an NVIDIA driver; this is Darwin",
        "no NVIDIA driver here (...)",
    ]
    assert preflight.blocking_problems({**GPU_MACHINE, "gpus": 0}) == ["the NVIDIA driver reports no CUDA device"]
    no_export = {**GPU_MACHINE, "export_missing": ["torch", "transformers"]}
    assert "pip install -e '.[export]'" in preflight.blocking_problems(no_export)[0]
    assert preflight.blocking_problems(no_export, need_export=False) == []  # --artifacts: nothing to export
    no_onnx = {**GPU_MACHINE, "export_missing": ["onnx"]}
    assert "need onnx" in preflight.blocking_problems(no_onnx, need_export=False)[0]  # the build reads the graphs


def test_install_plan():
    assert preflight.install_plan(GPU_MACHINE) == []
    assert preflight.install_plan({**GPU_MACHINE, "tensorrt": None}) == [trt.TENSORRT_PIP]
    assert preflight.install_plan({**GPU_MACHINE, "tensorrt": "10.9.0.34"}) == [trt.TENSORRT_PIP]
    assert preflight.install_plan({**GPU_MACHINE, "onnxruntime": None}) == [trt.ONNXRUNTIME_GPU_PIP]


def test_e2e_decision():
    assert preflight.e2e_decision(GPU_MACHINE) == (True, "Triton with the TensorRT and Python backends found")
    run, why = preflight.e2e_decision({**GPU_MACHINE, "triton_binary": None})
    assert not run and "engines timed directly" in why
    run, why = preflight.e2e_decision({**GPU_MACHINE, "triton_backends": ["python"]})
    assert not run and "no tensorrt backend" in why
    run, why = preflight.e2e_decision({**GPU_MACHINE, "torch_cuda": "13.0"})
    assert not run and "R580" in why and "supports CUDA 12.8" in why


def test_cannot_run_message_and_options():
    env = {**GPU_MACHINE, "driver_error": "no NVIDIA driver here (x)", "gpus": 0, "tensorrt": None}
    with pytest.raises(CannotRunError) as info:
        run_preflight(Options(), env)
    text = str(info.value)
    assert text.splitlines()[:2] == ["gpu-check cannot run here:", "  - no NVIDIA driver here (x)"]
    assert trt.TENSORRT_PIP in text
    with pytest.raises(ValueError, match="--model must be one of"):
        run_preflight(Options(model="tiny"), GPU_MACHINE)
    assert run_preflight(Options(), GPU_MACHINE) is GPU_MACHINE
    args = Namespace(
        model="full",
        work=None,
        artifacts=None,
        precision=None,
        batches="1,2",
        iterations=5,
        warmup=1,
        no_install=True,
        no_e2e=False,
        requests=16,
        concurrency=4,
    )
    opts = options_from(args)
    assert (opts.model, opts.batches, opts.install, opts.e2e) == ("full", (1, 2), False, True)
    assert plan.MODELS[opts.model] == "full-random"


def test_synthetic_images_are_distinct_pngs():
    a, b = synthetic_image(0), synthetic_image(1)
    assert a != b and a.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(a)).size == (640, 480)


# ---------------------------------------------------------------- the e2e timing code against a real (CPU) Triton


@pytest.mark.timeout(600)
def test_e2e_timing_against_the_local_server(client):
    """The request/timing half of the Triton stage, run against the tiny model on the bundled CPU
    tritonserver (the GPU repository itself needs the NGC image)."""
    timings = time_requests(client, iterations=2, warmup=1)
    assert set(timings) == {"text", "point"} and all(t["iterations"] == 2 for t in timings.values())
    load = throughput(client, requests=4, concurrency=2)
    assert load["requests"] == 4 and load["images_per_s"] > 0
    e2e = {"ran": True, "reason": "", **timings, "throughput": load}
    table = report.format_table(_report({}, e2e))
    assert "end-to-end through Triton (gRPC, one image per request):" in table and "point  p50" in table


def test_install_refusals():
    env = dict(GPU_MACHINE)
    install([], allowed=False, env=env, log=print)  # nothing to install: nothing happens
    assert env == GPU_MACHINE
    with pytest.raises(CannotRunError, match="drop --no-install") as refused:
        install([trt.TENSORRT_PIP], allowed=False, env=env, log=print)
    assert "server.gpu_check.torch_probe" in str(refused.value)  # what still runs on that GPU


# ---------------------------------------------------------------- torch_probe (the GPU checks that need only torch)


@NO_GPU
def test_torch_probe_refuses_without_a_cuda_device(tmp_path):
    done = _probe([], tmp_path)
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--device cpu --small" in done.stderr


def test_torch_probe_runs_small_on_the_cpu(tmp_path, tiny_artifacts):
    """The probe's own code path, small and on the CPU: parity rows pass, every mode's gpu path
    equals its cpu path, every table is printed, the JSON holds a timing for each kept count, batch, dtype."""
    args = ["--device", "cpu", "--small", "--image-hw", "40,70", "--kept", "1,4", "--batches", "1,2"]
    args += ["--artifacts", str(tiny_artifacts), "--stages", "--serving"]
    done = _probe([*args, "--warmup", "0", "--iterations", "1", "--json", str(tmp_path / "p.json")], tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["ok"] and [r["kept"] for r in result["parity"]] == [1, 4]
    assert all(r["flipped"] <= 1e-4 for r in result["parity"])
    assert all(r["device_ms_per_mask"] > 0 and r["cpu_ms_per_mask"] > 0 for r in result["postprocess"])
    assert [(r["dtype"], r["batch"]) for r in result["vision"]] == [(d, b) for d in ("fp32", "bf16") for b in (1, 2)]
    assert [r["dtype"] for r in result["request"]] == ["fp32", "bf16"] and "parity ok" in done.stdout
    assert [r["mode"] for r in result["pipeline"]] == ["text", "point", "box", "auto"]
    assert all(r["ok"] and r["detections"] >= 1 for r in result["pipeline"]), result["pipeline"]
    timed = {(r["component"], r["batch"]) for r in result["stages"] if r["ms"]}
    assert {(c, 1) for c in ("vision", "text", "concept", "mask", "prompt")} <= timed, result["stages"]
    assert len(result["serving"]) == 7 and all(r["ms"] > 0 for r in result["serving"])


def _probe(args, tmp_path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "server.gpu_check.torch_probe", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)


def test_torch_probe_serving_builds_its_tokenizer_without_artifacts(tiny_artifacts):
    """``--serving`` without an export (as on Modal) builds the tokenizer from open_clip's vocabulary:
    the same file every export carries."""
    from server.gpu_check.torch_probe import parse_args, tokenizer_json  # noqa: PLC0415 (imports torch)

    built = tokenizer_json(parse_args(["--serving"]))
    assert built.read_text() == (tiny_artifacts / "tokenizer.json").read_text()
    assert tokenizer_json(parse_args(["--artifacts", str(tiny_artifacts)])) == tiny_artifacts / "tokenizer.json"
