"""Engines for gpu-check (GPU): build through the project's parity gate, check, time each stage."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from export.trt import (
    EngineBuildError,
    EngineParityError,
    Tolerance,
    build_engines,
    compare_engine,
    engine_latency,
    engine_path,
    parse_precision,
)
from server.gpu_check.plan import MIN_COSINE, StageRun
from server.gpu_check.report import stage_row

Log = Callable[[str], None]


def build_engines_each(
    artifacts: Path, engines_root: Path, names: list[str], precision, log: Log
) -> tuple[Path | None, dict]:
    """Build (or reuse) every component's engine with export.trt's rules; one failure does not stop the rest.

    Returns (engine directory, {component: record or {"error": message}}).
    """
    directory, engines, precisions = None, {}, parse_precision(precision, names)
    for name in names:
        try:
            result = build_engines(artifacts, engines_root, components=[name], precision=precisions[name], log=log)
        except (EngineBuildError, EngineParityError) as err:
            engines[name] = {"error": str(err).splitlines()[0]}
            continue
        directory = result.engine_dir
        engines[name] = result.records[name]
    return directory, engines


def check_engine(engine_dir: Path, artifacts: Path, spec, image_size: int, log: Log) -> list[dict]:
    """Fresh engine vs ONNX Runtime fp32 rows at the spec's parity sizes (cosine ≥ MIN_COSINE per output)."""
    gate = Tolerance(min_cosine=MIN_COSINE, atol=0.0)
    try:
        return compare_engine(
            engine_path(engine_dir, spec.name),
            artifacts / spec.onnx_file,
            spec,
            image_size=image_size,
            tolerance=gate,
            reference_on_gpu=True,
            log=log,
        )
    except EngineParityError as err:
        return err.rows


def time_stages(
    engine_dir: Path, specs: dict, plan: list[StageRun], image_size: int, iterations: int, warmup: int, log: Log
) -> list[dict]:
    """One row per planned (stage, batch): engine-only latency, or the reason it was skipped."""
    rows = []
    for run in plan:
        plan_file = engine_path(engine_dir, run.component)
        if run.sizes is None or not plan_file.is_file():
            rows.append(
                stage_row(run if run.sizes is None else StageRun(run.component, run.batch, None, "no engine"), None)
            )
            continue
        latency = engine_latency(
            plan_file,
            specs[run.component],
            image_size=image_size,
            sizes=run.sizes,
            iterations=iterations,
            warmup=warmup,
        )
        rows.append(stage_row(run, latency))
        log(f"{run.component} batch {run.batch}: p50 {latency['p50_ms']:.2f} ms")
    return rows
