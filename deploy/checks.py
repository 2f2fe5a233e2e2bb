"""What the Modal entrypoints check and print: smoke requests per mode (the seeds' REST contract),
response checks, the benchmark command, build-report formatting and the ``::verify`` options."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from server.gpu_check.run import Options

VERIFY_MODELS = ("bench", "full", "served")
RESPONSE_KEYS = {
    "text": ("masks", "boxes", "scores", "count", "image_shape"),
    "point": ("mask", "score", "all_scores", "image_shape"),
    "box": ("mask", "score", "all_scores", "image_shape"),
    "auto": ("masks", "count", "image_shape"),
}


def smoke_requests(image_b64: str, width: int, height: int, text: str) -> dict[str, dict]:
    """One gateway request per mode (the seeds' JSON contract), prompts placed inside the image (px)."""
    box = [width * 0.25, height * 0.25, width * 0.75, height * 0.75]
    return {
        "text": {"image": image_b64, "mode": "text", "text": text},
        "point": {"image": image_b64, "mode": "point", "point_coords": [[width / 2, height / 2]], "point_labels": [1]},
        "box": {"image": image_b64, "mode": "box", "box_coords": box},
        "auto": {"image": image_b64, "mode": "auto", "points_per_batch": 64},
    }


def summarize_response(mode: str, body: dict, height: int, width: int) -> str:
    """One line about a gateway response; ValueError if it breaks the seeds' contract."""
    missing = [k for k in RESPONSE_KEYS[mode] if k not in body]
    if missing:
        raise ValueError(f"{mode} response lacks {missing}: {str(body)[:300]}")
    if list(body["image_shape"]) != [height, width]:
        raise ValueError(f"{mode} response image_shape {body['image_shape']} != [{height}, {width}]")
    if mode in ("point", "box"):
        return f"{mode}: score {body['score']:.3f}, {len(body['all_scores'])} candidates"
    return f"{mode}: {body['count']} masks"


def bench_command(grpc_address: str, args: str = "") -> list[str]:
    """``python -m bench`` (the project's benchmark CLI) over Triton gRPC with TLS at ``grpc_address``
    (host:port of a ``grpc_tunnel``), plus the user's ``args``. Triton's own API, not the REST gateway:
    the benchmark measures the served models; the reference needs ``--checkpoint`` or ``--no-reference``."""
    return [
        sys.executable,
        "-m",
        "bench",
        "--grpc-url",
        f"grpcs://{grpc_address}",
        "--protocols",
        "grpc",
    ] + shlex.split(args)


def format_report(report: dict) -> str:
    """Human-readable parity/latency table of a build report (report.json)."""
    lines = [f"build: {report['key']}", "engine vs ONNX Runtime:"]
    lines += [_engine_line(name, engine) for name, engine in report["engines"].items()]
    onnx = report.get("onnx_vs_transformers")
    lines.append("ONNX Runtime vs transformers: " + ("not recorded" if onnx is None else _onnx_summary(onnx)))
    return "\n".join(lines)


def _engine_line(name: str, engine: dict) -> str:
    """``  <name> <precision[/rules]> ok|FAIL min cosine … p50 … ms p90 … ms`` of one engine's record."""
    rows = engine.get("parity") or []
    worst = min(rows, key=lambda r: r["cosine"]) if rows else None
    lat = engine.get("latency") or {}
    status = "ok" if all(r["ok"] for r in rows) else "FAIL"
    rules = engine.get("rules")
    label = engine.get("built_precision", "?") + (f"/{rules}" if rules not in (None, "none") else "")
    return (
        f"  {name:<8} {label:<5} {status:<4} "
        + (f"min cosine {worst['cosine']:.6f} ({worst['output']} @ {worst['sizes']}) " if worst else "")
        + (f"p50 {lat['p50_ms']:.2f} ms p90 {lat['p90_ms']:.2f} ms" if lat else "")
    )


def _onnx_summary(report) -> str:
    """Summary of export.pipeline's parity_report.json ({"checks": [{..., "max_abs", "ok"}]})."""
    rows = report if isinstance(report, list) else report.get("checks", [])
    bad = [r for r in rows if not r.get("ok", True)]
    worst = max((r.get("max_abs", 0.0) for r in rows), default=0.0)
    return f"{len(rows)} checks, {len(bad)} failing, worst max_abs {worst:.2e}"


def report_ok(report: dict) -> bool:
    """True if every engine parity row passed."""
    return all(r["ok"] for eng in report["engines"].values() for r in (eng.get("parity") or []))


def check_verify_model(model: str) -> str:
    """``model`` if ``::verify`` knows it; ValueError naming the choices otherwise."""
    if model not in VERIFY_MODELS:
        raise ValueError(f"--model must be one of {VERIFY_MODELS}, got {model!r}")
    return model


def gpu_check_options(model: str, work_root, served_root: Path | None = None) -> Options:
    """server.gpu_check Options of ``::verify``: bench/full exported into ``work_root/<model>``, or the
    served build's artifacts and engines (``served_root``: its BuildPaths.root, required for "served")."""
    work = Path(str(work_root)) / check_verify_model(model)
    if model == "served":
        if served_root is None:
            raise ValueError("--model served needs the served build's directory (served_root)")
        served = Path(served_root)
        return Options(
            model="full", work=work, artifacts=served / "artifacts", engines=served / "engines", install=False
        )
    return Options(model=model, work=work, install=False)
