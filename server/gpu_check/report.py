"""gpu-check's report (pure): rows, verdict, the printed table and the JSON file.

Report layout (JSON):

    {"tool", "model", "checkpoint", "environment": {...}, "seconds": {phase: s},
     "engines": {component: {"built_precision", "rules", "attempts", "build_seconds",
                             "parity": [rows of export.trt.parity_row], "parity_ok"}},
     "stages": [{"component", "batch", "sizes", "note", "p50_ms", "p90_ms", "mean_ms", "items_per_s"}],
     "e2e": {"ran", "reason", "text": {...ms}, "point": {...ms}, "throughput": {"images_per_s", ...}},
     "targets": {name: {"target", "measured", "met"}}, "ok", "problems": [...]}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from server.gpu_check.plan import REFERENCE, TARGETS, StageRun


def parity_summary(rows: list[dict]) -> dict:
    """Worst cosine (and where), largest max abs diff, and whether every row passed."""
    if not rows:
        return {"ok": False, "min_cosine": None, "worst": None, "max_abs": None}
    worst = min(rows, key=lambda r: r["cosine"])
    return {
        "ok": all(r["ok"] for r in rows),
        "min_cosine": worst["cosine"],
        "worst": f"{worst['output']} @ {worst['sizes']}",
        "max_abs": max(r["max_abs"] for r in rows),
    }


def stage_row(run: StageRun, latency: dict | None) -> dict:
    """One timing row; items/s = batch ÷ p50 (None when the stage was skipped)."""
    row = {"component": run.component, "batch": run.batch, "sizes": run.sizes, "note": run.note}
    if latency is None:
        return {**row, "p50_ms": None, "p90_ms": None, "mean_ms": None, "items_per_s": None}
    p50 = latency["p50_ms"]
    return {
        **row,
        "p50_ms": p50,
        "p90_ms": latency["p90_ms"],
        "mean_ms": latency["mean_ms"],
        "items_per_s": run.batch * 1000.0 / p50 if p50 > 0 else None,
    }


def target_status(e2e: dict) -> dict:
    """{target: {"target", "measured", "met"}}; measured/met are None where e2e did not run."""
    measured = {
        "text_p50_ms": (e2e.get("text") or {}).get("p50_ms"),
        "images_per_s": (e2e.get("throughput") or {}).get("images_per_s"),
    }
    status = {}
    for name, goal in TARGETS.items():
        value = measured.get(name)
        met = None if value is None else (value <= goal if name.endswith("_ms") else value >= goal)
        status[name] = {"target": goal, "measured": value, "met": met}
    return status


def verdict(report: dict) -> tuple[bool, list[str]]:
    """(ok, problems): ok when every engine was built and every parity row passed, and e2e (if run) succeeded."""
    problems = [f"{name}: no engine ({eng['error']})" for name, eng in report["engines"].items() if eng.get("error")]
    for name, eng in report["engines"].items():
        summary = parity_summary(eng.get("parity") or [])
        if not eng.get("error") and not summary["ok"]:
            problems.append(
                f"{name}: engine vs ONNX Runtime out of tolerance (worst cosine "
                f"{summary['min_cosine']}, at {summary['worst']})"
            )
    if report.get("e2e", {}).get("error"):
        problems.append(f"end-to-end through Triton failed: {report['e2e']['error']}")
    return not problems, problems


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _engine_lines(report: dict) -> list[str]:
    lines = [
        "engines (vs ONNX Runtime fp32):",
        f"  {'component':<10} {'precision':<14} {'min cosine':>11} {'max abs':>10} {'build s':>8}  verdict",
    ]
    for name, eng in report["engines"].items():
        s = parity_summary(eng.get("parity") or [])
        label = eng.get("built_precision", "-") + ("/" + eng["rules"] if eng.get("rules") not in (None, "none") else "")
        cos = "-" if s["min_cosine"] is None else f"{s['min_cosine']:.6f}"
        diff = "-" if s["max_abs"] is None else f"{s['max_abs']:.2e}"
        state = "ERROR" if eng.get("error") else ("ok" if s["ok"] else "FAIL")
        lines.append(f"  {name:<10} {label:<14} {cos:>11} {diff:>10} {eng.get('build_seconds', '-')!s:>8}  {state}")
    return lines


def _stage_lines(report: dict) -> list[str]:
    lines = [
        "stages (engine only, GPU execute + sync):",
        f"  {'component':<10} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'items/s':>10}  note",
    ]
    for row in report["stages"]:
        rate = "-" if row["items_per_s"] is None else f"{row['items_per_s']:.1f}"
        lines.append(
            f"  {row['component']:<10} {row['batch']:>5} {_ms(row['p50_ms']):>9} {_ms(row['p90_ms']):>9} "
            f"{rate:>10}  {row['note']}"
        )
    return lines


def _e2e_lines(report: dict) -> list[str]:
    e2e = report.get("e2e", {})
    if not e2e.get("ran"):
        return [f"end-to-end through Triton: not run ({e2e.get('reason', 'not requested')})"]
    lines = ["end-to-end through Triton (gRPC, one image per request):"]
    for mode in ("text", "point"):
        if e2e.get(mode):
            lines.append(f"  {mode:<6} p50 {_ms(e2e[mode]['p50_ms'])} ms  p90 {_ms(e2e[mode]['p90_ms'])} ms")
    if e2e.get("throughput"):
        t = e2e["throughput"]
        lines.append(f"  batched text: {t['images_per_s']:.1f} images/s at concurrency {t['concurrency']}")
    return lines


def format_table(report: dict) -> str:
    """The human-readable report printed by gpu-check."""
    env = report.get("environment", {})
    head = [
        f"gpu-check: model {report.get('model')} on {env.get('gpu') or '?'} (driver {env.get('driver') or '?'}, "
        f"TensorRT {env.get('tensorrt') or '?'})"
    ]
    targets = (
        ["targets:"]
        + [
            f"  {name}: {t['target']} → measured {_ms(t['measured'])} "
            f"({'met' if t['met'] else 'not met' if t['met'] is False else 'not measured'})"
            for name, t in report.get("targets", {}).items()
        ]
        + [f"  reference: {REFERENCE}"]
    )
    ok, problems = verdict(report)
    tail = ["result: ok" if ok else "result: FAILED"] + [f"  - {p}" for p in problems]
    return "\n".join(head + _engine_lines(report) + _stage_lines(report) + _e2e_lines(report) + targets + tail)


def write_report(path: Path, report: dict) -> Path:
    """Write the JSON report through a temp file + rename; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path
