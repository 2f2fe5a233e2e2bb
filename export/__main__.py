"""CLI: ``python -m export onnx|verify|trt|all --model M --out DIR``.

onnx    export the graphs, tokenizer.json and manifest.json
verify  ONNX Runtime vs PyTorch parity (2 shapes per component + both chains) → parity_report.json,
        then the bf16 gate where the CPU has bf16: OpenVINO bf16 vs fp32, cosine ≥ 0.9995 per output
        → precision_report.json (a failing component is served in fp32; not an error)
trt     TensorRT engines from the ONNX files (needs a CUDA GPU; stops at once without one)
all     onnx + verify (+ trt when a GPU is present)
latency PyTorch vs ONNX Runtime CPU latency per component (median of --runs) → latency_report.json
runtimes ONNX Runtime fp32 vs OpenVINO f32 vs OpenVINO bf16 per component (interleaved, median of
        --runs, --threads) → runtime_latency.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export import pipeline
from export.checkpoint import CheckpointError
from export.latency import measure
from export.manifest import ManifestError, load_manifest
from export.precision import cpu_capabilities, gate, gate_lines
from export.runtime_latency import measure as measure_runtimes
from export.trt import (
    EngineBuildError,
    EngineParityError,
    GpuUnavailableError,
    TensorRTVersionError,
    build_engines,
    require_gpu,
)
from sam3_spec import COMPONENTS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("onnx", "verify", "trt", "all", "latency", "runtimes"))
    parser.add_argument(
        "--model", default="facebook/sam3", help="HF id, checkpoint dir, or 'tiny' (default facebook/sam3)"
    )
    parser.add_argument("--out", type=Path, required=True, help="artifacts directory")
    parser.add_argument("--components", default=",".join(COMPONENTS), help="comma list of " + ",".join(COMPONENTS))
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument(
        "--hf-token", default=os.environ.get("HF_TOKEN"), help="token for gated models (default $HF_TOKEN)"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="parity absolute tolerance")
    parser.add_argument("--rtol", type=float, default=1e-4, help="parity tolerance relative to max |expected|")
    parser.add_argument("--runs", type=int, default=10, help="latency: timed runs per side (after 2 warm-up)")
    parser.add_argument(
        "--threads", type=int, default=0, help="runtimes: inference threads (0 = the runtime's default)"
    )
    parser.add_argument(
        "--precision", default=None, help="trt: fp32|fp16|bf16 for every component (default per component)"
    )
    args = parser.parse_args(argv)
    args.components = _components(parser, args.components)
    return args


def _components(parser, text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        parser.error(f"unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
    return names


def run(args: argparse.Namespace) -> None:
    if args.command in ("onnx", "all"):
        pipeline.export_onnx(args.model, args.out, args.components, args.opset, args.hf_token)
    if args.command in ("verify", "all"):
        pipeline.verify(args.out, args.hf_token, args.atol, args.rtol, args.components)
        bf16_gate(args.out, args.components)
    if args.command == "trt" or (args.command == "all" and _has_gpu()):
        build_engines(args.out, components=args.components, precision=args.precision)
    elif args.command == "runtimes":
        measure_runtimes(args.out, runs=args.runs, threads=args.threads, components=args.components)
    elif args.command == "latency":
        measure(args.out, runs=args.runs, components=args.components, token=args.hf_token)
    elif args.command == "all":
        pipeline.log("no CUDA GPU here: skipping TensorRT engines (run `python -m export trt` on a GPU machine)")


def bf16_gate(out: Path, components) -> None:
    """The bf16 parity gate of ``components`` (export/precision.py), or a line saying why it is skipped."""
    capabilities = cpu_capabilities()
    if "BF16" not in capabilities:
        pipeline.log(f"bf16 gate skipped: this CPU has no bf16 (OpenVINO capabilities {capabilities}); serving is fp32")
        return
    manifest = load_manifest(out)
    specs = {n: s for n, s in manifest.specs().items() if n in components}
    results = gate(out, specs, manifest.dims.image_size, log=pipeline.log)
    for line in gate_lines(results):
        pipeline.log(f"bf16 gate {line}")


def _has_gpu() -> bool:
    try:
        require_gpu()
    except GpuUnavailableError:
        return False
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    from export.onnx_export import ExportError  # noqa: PLC0415 (imports torch: export extra)
    from export.parity import ParityError  # noqa: PLC0415 (imports torch: export extra)

    try:
        run(args)
    except (CheckpointError, ManifestError, ExportError, GpuUnavailableError, TensorRTVersionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ParityError, EngineBuildError, EngineParityError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
