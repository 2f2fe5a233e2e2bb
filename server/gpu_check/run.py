"""gpu-check end to end: preflight → (install) → export → engines → parity → stage timing → Triton e2e.

The same function runs behind ``sam3-triton gpu-check`` and Modal's ``::verify``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from client.api import Sam3Error
from export.manifest import load_manifest
from server.artifacts import ensure_artifacts
from server.gpu_check.e2e import run_e2e
from server.gpu_check.measure import build_engines_each, check_engine, time_stages
from server.gpu_check.plan import BATCHES, MODELS, timing_plan
from server.gpu_check.preflight import (
    blocking_problems,
    cannot_run_message,
    e2e_decision,
    install_plan,
    installed_version,
    probe,
)
from server.gpu_check.report import target_status, verdict
from server.triton import TritonStartError, cache_root

Log = Callable[[str], None]


class CannotRunError(RuntimeError):
    """gpu-check cannot start here (no Linux / driver / GPU / export packages); the message lists each."""


@dataclass
class Options:
    """What gpu-check does. work: where exports, engines and the repository go (default: the cache)."""

    model: str = "bench"
    work: Path | None = None
    artifacts: Path | None = None  # an existing export to check instead of exporting ``model``
    engines: Path | None = None  # engine root (default <work>/engines)
    precision: str | None = None
    batches: tuple[int, ...] = BATCHES
    iterations: int = 20
    warmup: int = 3
    install: bool = True
    e2e: bool = True
    requests: int = 64
    concurrency: int = 8


def work_dir(opts: Options) -> Path:
    return Path(opts.work) if opts.work else cache_root() / "gpu-check" / opts.model


def preflight(opts: Options, env: dict | None = None) -> dict:
    """The probe's facts; CannotRunError (naming every missing piece) when the check cannot run here."""
    if opts.model not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {opts.model!r}")
    env = env if env is not None else probe()
    problems = blocking_problems(env, need_export=opts.artifacts is None)
    if problems:
        raise CannotRunError(cannot_run_message(problems, env))
    return env


TORCH_ONLY_HINT = (
    "Without TensorRT, `python -m server.gpu_check.torch_probe --stages` still checks on this GPU what needs "
    "only torch (post-processing parity and cost, our stages in eager torch)"
)


def install(requirements: list[str], allowed: bool, env: dict, log: Log) -> None:
    """pip install ``requirements`` into this interpreter and refresh ``env``'s package facts
    (CannotRunError if not ``allowed`` or pip fails)."""
    if not requirements:
        return
    if not allowed:
        raise CannotRunError(f"gpu-check needs {requirements}; install them or drop --no-install. {TORCH_ONLY_HINT}")
    log(f"installing {' '.join(requirements)} ...")
    if subprocess.run([sys.executable, "-m", "pip", "install", *requirements]).returncode != 0:
        raise CannotRunError(f"pip could not install {requirements} (see its output above). {TORCH_ONLY_HINT}")

    importlib.invalidate_caches()
    env["tensorrt"] = installed_version()
    env["onnxruntime"] = installed_version(("onnxruntime-gpu", "onnxruntime"))


def export_model(opts: Options, work: Path, log: Log) -> Path:
    """The artifacts to check: ``opts.artifacts``, or ``opts.model`` exported (ONNX only) into ``work/onnx``."""
    if opts.artifacts:
        return Path(opts.artifacts)

    log(f"exporting {MODELS[opts.model]} (random weights) to {work / 'onnx'} ...")
    return ensure_artifacts(MODELS[opts.model], work / "onnx", verify=False)


def _phase(seconds: dict, name: str, start: float) -> float:
    now = time.monotonic()
    seconds[name] = round(now - start, 1)
    return now


def run_gpu_check(opts: Options, log: Log = print, env: dict | None = None) -> dict:
    """Run every stage; return the report (see server.gpu_check.report)."""
    env, seconds, t = preflight(opts, env), {}, time.monotonic()
    install(install_plan(env), opts.install, env, log)
    work = work_dir(opts)
    artifacts = export_model(opts, work, log)
    t = _phase(seconds, "export", t)
    manifest = load_manifest(artifacts, check_hashes=True)
    specs, size = manifest.specs(), manifest.dims.image_size
    engine_dir, engines = build_engines_each(
        artifacts, opts.engines or work / "engines", list(specs), opts.precision, log
    )
    t = _phase(seconds, "engines", t)
    for name, eng in engines.items():
        if not eng.get("error"):
            eng["parity"] = check_engine(engine_dir, artifacts, specs[name], size, log)
    t = _phase(seconds, "parity", t)
    stages = (
        time_stages(engine_dir, specs, timing_plan(specs, opts.batches), size, opts.iterations, opts.warmup, log)
        if engine_dir
        else []
    )
    t = _phase(seconds, "stages", t)
    e2e = run_e2e_stage(opts, env, artifacts, engine_dir, engines, work, log)
    _phase(seconds, "e2e", t)
    report = {
        "tool": "sam3-triton gpu-check",
        "model": opts.model,
        "checkpoint": manifest.model,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "environment": env,
        "seconds": seconds,
        "engines": engines,
        "stages": stages,
        "e2e": e2e,
        "targets": target_status(e2e),
    }
    report["ok"], report["problems"] = verdict(report)
    return report


def run_e2e_stage(opts: Options, env: dict, artifacts: Path, engine_dir, engines: dict, work: Path, log: Log) -> dict:
    """The Triton stage when it can run (every engine built, Triton + backends present), else why not."""
    run, reason = e2e_decision(env) if opts.e2e else (False, "--no-e2e")
    if run and (engine_dir is None or any(e.get("error") for e in engines.values())):
        run, reason = False, "not every engine was built"
    if not run:
        log(f"end-to-end through Triton skipped: {reason}")
        return {"ran": False, "reason": reason}

    try:
        return run_e2e(
            artifacts,
            engine_dir,
            work,
            iterations=opts.iterations,
            warmup=opts.warmup,
            requests=opts.requests,
            concurrency=opts.concurrency,
            log=log,
        )
    except TritonStartError as err:  # recorded: the verdict fails on it and the table shows it
        return {"ran": False, "reason": "tritonserver did not start", "error": str(err)}
    except Sam3Error as err:
        return {"ran": False, "reason": "a request through Triton failed", "error": str(err)}
