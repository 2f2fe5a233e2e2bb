"""``python -m export trt`` / ``python -m export.trt``: build the engines of an artifacts dir."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from export.manifest import ManifestError
from export.trt.build import DEFAULT_WORKSPACE_GIB, build_engines
from export.trt.errors import EngineBuildError, EngineParityError, GpuUnavailableError, TensorRTVersionError
from export.trt.pins import TENSORRT_VERSION, TRITON_IMAGE
from export.trt.rules import DEFAULT_BUILD_PRECISION, DEFAULT_LADDER
from sam3_spec import COMPONENTS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export trt",
        description="ONNX graphs → TensorRT engines (GPU only), each checked against ONNX Runtime",
    )
    p.add_argument("--artifacts", required=True, type=Path, help="dir written by `python -m export onnx`")
    p.add_argument(
        "--out",
        type=Path,
        help="engine root (default: <artifacts>/engines); engines go to <out>/trt-<version>/<gpu>/<component>.plan",
    )
    p.add_argument("--components", default="", help=f"comma list from {list(COMPONENTS)} (default: all)")
    p.add_argument(
        "--precision",
        default="",
        help="fp32|fp16|bf16 for all, or vision=fp16,prompt=fp32 "
        f"(default {DEFAULT_BUILD_PRECISION}, rule sets {list(DEFAULT_LADDER)} then fp32)",
    )
    p.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB)
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0-5")
    p.add_argument("--no-parity", action="store_true", help="skip the engine vs ONNX Runtime check")
    p.add_argument(
        "--no-fallback", action="store_true", help="build only the first attempt (no other rule set, no fp32 rebuild)"
    )
    p.add_argument("--force", action="store_true", help="rebuild engines that are up to date")
    p.add_argument(
        "--any-tensorrt",
        action="store_true",
        help=f"allow a TensorRT other than {TENSORRT_VERSION} (engines then won't load in {TRITON_IMAGE})",
    )
    return p


def main_trt(argv: Sequence[str] | None = None) -> int:
    """``python -m export trt`` entry point; returns the exit status (2 = no GPU / bad input)."""
    args = _parser().parse_args(argv)
    try:
        result = build_engines(
            args.artifacts,
            args.out,
            args.components or None,
            args.precision or None,
            workspace_gib=args.workspace_gib,
            opt_level=args.opt_level,
            parity=not args.no_parity,
            fallback_fp32=not args.no_fallback,
            force=args.force,
            require_pinned_version=not args.any_tensorrt,
        )
    except (GpuUnavailableError, TensorRTVersionError, ManifestError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (EngineBuildError, EngineParityError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"engines ready in {result.engine_dir}: "
        + ", ".join(
            f"{k} ({r['built_precision']}{'/' + r['rules'] if r.get('rules', 'none') != 'none' else ''})"
            for k, r in result.records.items()
        )
    )
    return 0
