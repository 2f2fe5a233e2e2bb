"""PyTorch vs ONNX Runtime (CPU) latency per component, same inputs, side by side.

``python -m export latency --out DIR [--runs 10] [--warmup 2]``: for each exported component,
runs the PyTorch wrapper (eager, fp32, no grad) and the ONNX Runtime session on identical
inputs at the spec's first parity size, after warm-up, and prints median / p90 per side and
the ratio. Writes ``latency_report.json`` beside the graphs, echoing the configuration.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from export.checkpoint import load_models, resolve_checkpoint
from export.inputs import example_inputs
from export.manifest import load_manifest
from export.pipeline import log


def _times(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _summary(samples: list[float]) -> dict:
    return {
        "median_ms": 1e3 * statistics.median(samples),
        "p90_ms": 1e3 * float(np.percentile(samples, 90)),
        "runs": len(samples),
    }


def measure(out: Path, runs: int = 10, warmup: int = 2, components=None, token=None) -> dict:
    """{component: {"sizes", "torch", "onnxruntime", "ratio"}} and the JSON report on disk."""
    import torch  # noqa: PLC0415 (optional: export extra)

    from export.parity import ort_session  # noqa: PLC0415 (imports torch: export extra)
    from export.wrappers import build_wrappers  # noqa: PLC0415 (imports torch: export extra)

    manifest = load_manifest(Path(out))
    detector, tracker = load_models(resolve_checkpoint(manifest.model, Path(out)), token)
    wrappers, results = build_wrappers(detector, tracker), {}
    for name, spec in manifest.specs().items():
        if components and name not in components:
            continue
        sizes = spec.parity_sizes[0]
        feeds = example_inputs(spec, sizes, manifest.dims.image_size)
        tensors = [torch.from_numpy(v) for v in feeds.values()]
        session = ort_session(Path(out) / spec.onnx_file)
        log(f"latency {name} at {sizes}: {warmup} warm-up + {runs} runs each")
        with torch.no_grad():
            eager = _summary(_times(lambda: wrappers[name](*tensors), runs, warmup))
        ort = _summary(_times(lambda: session.run(None, feeds), runs, warmup))
        results[name] = {
            "sizes": sizes,
            "torch": eager,
            "onnxruntime": ort,
            "speedup": eager["median_ms"] / ort["median_ms"],
        }
    report = {
        "model": manifest.model,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "runs": runs,
        "warmup": warmup,
        "components": results,
    }
    (Path(out) / "latency_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return report


def format_table(report: dict) -> str:
    rows = [
        f"model {report['model']}  (threads {report['threads']}, median of {report['runs']} runs)",
        f"{'component':<10} {'sizes':<22} {'torch ms':>10} {'ORT ms':>10} {'ORT speedup':>12}",
    ]
    for name, r in report["components"].items():
        sizes = ",".join(f"{k}={v}" for k, v in r["sizes"].items())
        rows.append(
            f"{name:<10} {sizes:<22} {r['torch']['median_ms']:>10.1f} {r['onnxruntime']['median_ms']:>10.1f} "
            f"{r['speedup']:>11.2f}x"
        )
    return "\n".join(rows)
