"""``sam3-triton gpu-check [--model bench|full] [--json FILE]``: prove engines, parity and latency on a GPU.

Exit status: 0 every engine built and matched ONNX Runtime (and e2e, if it ran, worked);
1 a check failed (see the table); 2 gpu-check cannot run here (the message names what is missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.manifest import ManifestError
from export.trt import GpuUnavailableError, TensorRTVersionError
from server.gpu_check.plan import BATCHES, MODELS, parse_batches
from server.gpu_check.report import format_table, write_report
from server.gpu_check.run import CannotRunError, Options, run_gpu_check

DEFAULT_JSON = Path("gpu-check.json")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """gpu-check's flags (shared by ``sam3-triton gpu-check`` and ``python -m server.gpu_check``)."""
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="bench",
        help="bench (small, random weights; ~minutes) or full (real SAM3 size, random weights)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"report file (default {DEFAULT_JSON})")
    p.add_argument("--work", type=Path, help="dir for the export, engines and repository (default: cache dir)")
    p.add_argument("--artifacts", type=Path, help="check this existing export instead of exporting --model")
    p.add_argument("--precision", default=None, help="fp32|fp16|bf16 or vision=fp16,prompt=fp32 (default fp16 + rules)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="stage batch sizes (default 1,4,8)")
    p.add_argument("--iterations", type=int, default=20, help="timed runs per measurement (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--requests", type=int, default=64, help="text requests of the batched throughput run")
    p.add_argument("--concurrency", type=int, default=8, help="client threads of the throughput run")
    p.add_argument("--no-install", action="store_true", help="never pip install the pinned TensorRT")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end stage through Triton")
    return p


def options_from(args: argparse.Namespace):
    return Options(
        model=args.model,
        work=args.work,
        artifacts=args.artifacts,
        precision=args.precision,
        batches=parse_batches(args.batches),
        iterations=args.iterations,
        warmup=args.warmup,
        install=not args.no_install,
        e2e=not args.no_e2e,
        requests=args.requests,
        concurrency=args.concurrency,
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run gpu-check for parsed ``args``: print the table, write the JSON; return the exit status."""
    try:
        report = run_gpu_check(options_from(args), log=lambda m: print(m, file=sys.stderr, flush=True))
    except (CannotRunError, GpuUnavailableError, TensorRTVersionError, ManifestError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"report written to {write_report(args.json, report)}")
    return 0 if report["ok"] else 1


def main(argv=None) -> int:
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="python -m server.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    return run_cli(parser.parse_args(argv))
