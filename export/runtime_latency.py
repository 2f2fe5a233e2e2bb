"""The cpu runtimes side by side on the exported graphs: ONNX Runtime fp32, OpenVINO f32, OpenVINO bf16.

``python -m export runtimes --out DIR [--runs 9] [--threads 2]``: for each exported component,
opens the three runners the Triton component model uses (triton_repo/ort_component/1/
component_runtime.py; OpenVINO with its static copy at the spec's opt sizes, as served) on the
same inputs at the spec's first parity size, warms each up, then
times them in interleaved rounds (one run of each per round, so load from other processes
spreads over all three) and prints the median per runner, with the bf16 vs f32 cosine (lowest
over the outputs). Writes ``runtime_latency.json`` beside the graphs. Needs openvino and
onnxruntime, not torch. OpenVINO bf16 is left out on a CPU without bf16.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from export.inputs import example_inputs
from export.manifest import load_manifest
from export.precision import cosine, cpu_capabilities, runtime_module
from export.repository import static_shapes

RUNNERS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
WARMUP = 3


def _label(runtime: str, precision: str) -> str:
    return f"{'ORT' if runtime == 'onnxruntime' else 'OV'} {precision}"


def _rounds(runners: dict, names: list, feeds: dict, runs: int) -> dict[str, list[float]]:
    """{label: seconds per run}, one run of every runner per round."""
    samples = {label: [] for label in runners}
    for _ in range(runs):
        for label, runner in runners.items():
            start = time.perf_counter()
            runner.run(names, feeds)
            samples[label].append(time.perf_counter() - start)
    return samples


def measure_component(out: Path, spec, image_size: int, runs: int, threads: int, kinds) -> dict:
    """{"sizes", "<label> ms": median, ..., "cosine bf16 vs f32"} of one component."""
    rt, static = runtime_module(), static_shapes(spec)
    runners = {
        _label(r, p): rt.open_runner(r, out / spec.onnx_file, p, threads, static_shapes=static) for r, p in kinds
    }
    names, feeds = [t.name for t in spec.outputs], example_inputs(spec, spec.parity_sizes[0], image_size)
    results = {label: [runner.run(names, feeds) for _ in range(WARMUP)][-1] for label, runner in runners.items()}
    row = {"sizes": spec.parity_sizes[0]}
    row.update(
        {
            f"{label} ms": round(1e3 * statistics.median(s), 2)
            for label, s in _rounds(runners, names, feeds, runs).items()
        }
    )
    if "OV bf16" in results:
        row["cosine bf16 vs f32"] = min(cosine(a, b) for a, b in zip(results["OV fp32"], results["OV bf16"]))
    return row


def measure(out: Path, runs: int = 9, threads: int = 0, components=None) -> dict:
    """Every (chosen) component of the artifacts in ``out``; prints the table, writes the JSON report."""
    out, manifest = Path(out), load_manifest(Path(out))
    kinds = [k for k in RUNNERS if k[1] != "bf16" or "BF16" in cpu_capabilities()]
    rows = {
        name: measure_component(out, spec, manifest.dims.image_size, runs, threads, kinds)
        for name, spec in manifest.specs().items()
        if not components or name in components
    }
    report = {
        "model": manifest.model,
        "threads": threads,
        "runs": runs,
        "warmup": WARMUP,
        "cpus": os.cpu_count(),
        "capabilities": cpu_capabilities(),
        "components": rows,
    }
    (out / "runtime_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return report


def format_table(report: dict) -> str:
    labels = [k for k in next(iter(report["components"].values())) if k.endswith(" ms")]
    head = f"{'component':<10}" + "".join(f"{label:>14}" for label in labels) + f"{'cosine bf16':>14}"
    title = (
        f"model {report['model']}  (threads {report['threads'] or 'default'}, median of {report['runs']} "
        "interleaved rounds)"
    )
    lines = [title, head]
    for name, row in report["components"].items():
        cos = row.get("cosine bf16 vs f32")
        lines.append(
            f"{name:<10}"
            + "".join(f"{row[label]:>14.1f}" for label in labels)
            + (f"{cos:>14.6f}" if cos is not None else f"{'-':>14}")
        )
    return "\n".join(lines)
