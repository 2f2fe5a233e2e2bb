"""What this machine has for gpu-check, found in about a second, and the decisions taken from it.

:func:`probe` only looks (ctypes into the driver, package metadata, files); it never imports
torch or tensorrt. The decisions are pure functions of the probe's dict, so they are tested
on machines without a GPU: what blocks the check, what to pip install, whether the
end-to-end stage through Triton can run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from pathlib import Path

from export.trt.cuda import CudaDriver, nvidia_driver_version
from export.trt.env import cuda_driver_problem, torch_cuda_version
from export.trt.errors import GpuUnavailableError
from export.trt.pins import ONNXRUNTIME_GPU_PIP, TENSORRT_PIP, TENSORRT_VERSION, TRITON_BINARY

TRITON_BACKENDS = Path("/opt/tritonserver/backends")
TENSORRT_DISTS = ("tensorrt-cu12", "tensorrt", "tensorrt_cu12")
WHERE_TO_RUN = (
    "run it on a Linux machine with an NVIDIA GPU and driver, or on Modal: "
    "`modal run modal_triton.py::verify` (docs/DEPLOY.md)"
)


def _driver_facts() -> dict:
    """{"gpu", "gpus", "driver", "driver_cuda", "driver_error"} from the CUDA driver API and NVML."""
    try:
        driver = CudaDriver()
        count = driver.device_count()
        cuda = driver.driver_cuda_version()
        return {
            "gpus": count,
            "gpu": driver.device_name(0) if count else "",
            "driver_cuda": list(cuda),
            "driver": nvidia_driver_version(),
            "driver_error": None,
        }
    except GpuUnavailableError as err:
        return {"gpus": 0, "gpu": "", "driver_cuda": None, "driver": None, "driver_error": str(err)}


def installed_version(dists=TENSORRT_DISTS) -> str | None:
    """Version of the first installed distribution among ``dists`` (package metadata; no import)."""
    for name in dists:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _missing_modules(names) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def probe() -> dict:
    """Facts of this machine (JSON-ready); fast and side-effect free."""
    facts = {"system": platform.system(), "machine": platform.machine(), **_driver_facts()}
    facts["tensorrt"] = installed_version() if importlib.util.find_spec("tensorrt") else None
    facts["onnxruntime"] = installed_version(("onnxruntime-gpu", "onnxruntime"))
    facts["onnxruntime_gpu"] = installed_version(("onnxruntime-gpu",)) is not None
    facts["torch_cuda"] = torch_cuda_version()
    facts["export_missing"] = _missing_modules(("torch", "transformers", "onnx"))
    facts["triton_binary"] = TRITON_BINARY if Path(TRITON_BINARY).is_file() else None
    facts["triton_backends"] = sorted(p.name for p in TRITON_BACKENDS.iterdir()) if TRITON_BACKENDS.is_dir() else []
    return facts


# ---------------------------------------------------------------- decisions (pure)


def blocking_problems(env: dict, need_export: bool = True) -> list[str]:
    """Every reason gpu-check cannot run at all here (empty: it can)."""
    problems = []
    if env["system"] != "Linux":
        problems.append(f"gpu-check needs Linux with an NVIDIA driver; this is {env['system']}")
    if env.get("driver_error"):
        problems.append(env["driver_error"])
    elif env.get("gpus", 0) < 1:
        problems.append("the NVIDIA driver reports no CUDA device")
    missing = [m for m in env.get("export_missing", []) if need_export or m == "onnx"]  # the build reads ONNX graphs
    if missing:
        problems.append(f"exporting and building need {', '.join(missing)}: pip install -e '.[export]'")
    return problems


def install_plan(env: dict) -> list[str]:
    """pip requirements to install before building engines: the pinned TensorRT when it is absent or
    another version; ONNX Runtime GPU when no onnxruntime is installed at all (an installed CPU
    onnxruntime is used as it is: both packages provide the same module)."""
    plan = [] if env.get("tensorrt") == TENSORRT_VERSION else [TENSORRT_PIP]
    return plan + ([ONNXRUNTIME_GPU_PIP] if env.get("onnxruntime") is None else [])


def e2e_decision(env: dict) -> tuple[bool, str]:
    """(run the end-to-end stage through Triton?, why / why not)."""
    if not env.get("triton_binary"):
        return False, f"no tritonserver at {TRITON_BINARY} (the NGC Triton image has it); engines timed directly"
    missing = [b for b in ("tensorrt", "python") if b not in env.get("triton_backends", [])]
    if missing:
        return False, f"Triton has no {' / '.join(missing)} backend in {TRITON_BACKENDS}; engines timed directly"
    if env.get("torch_cuda") and env.get("driver_cuda"):
        problem = cuda_driver_problem(env["torch_cuda"], tuple(env["driver_cuda"]))
        if problem:
            return False, f"the orchestrator's GPU post-processing cannot run: {problem}"
    return True, "Triton with the TensorRT and Python backends found"


def cannot_run_message(problems: list[str], env: dict) -> str:
    """The one message gpu-check prints when it stops before doing anything."""
    also = (
        []
        if env.get("tensorrt") == TENSORRT_VERSION
        else [f"tensorrt ({TENSORRT_PIP}; gpu-check installs it on a GPU machine)"]
    )
    lines = ["gpu-check cannot run here:"] + [f"  - {p}" for p in problems]
    if also:
        lines.append("  also missing: " + ", ".join(also))
    return "\n".join(lines + [WHERE_TO_RUN])
