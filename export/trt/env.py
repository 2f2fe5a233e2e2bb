"""What this machine has for the GPU path: driver, device, TensorRT, torch's CUDA.

Every check is fast (no torch import, no tensorrt import unless asked) and raises an error
that names each missing piece and what to do about it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from export.trt.cuda import CudaDriver
from export.trt.errors import CudaDriverError, GpuUnavailableError, TensorRTVersionError
from export.trt.pins import DRIVER_BRANCH_FOR_CUDA, TENSORRT_PIP, TENSORRT_VERSION, TRITON_IMAGE

BUILD_HINT = (
    "TensorRT engines are built on a machine with an NVIDIA GPU: run "
    "`modal run modal_triton.py::build` (docs/DEPLOY.md), or on a local GPU install "
    f"'{TENSORRT_PIP}' and run `python -m export trt`"
)


def gpu_problems(need_tensorrt: bool = True) -> tuple[str, list[str]]:
    """(name of CUDA device 0 or "", every missing piece as a sentence)."""
    problems, name = [], ""
    try:
        driver = CudaDriver()
        if driver.device_count() < 1:
            problems.append("the NVIDIA driver reports no CUDA device")
        else:
            name = driver.device_name(0)
    except GpuUnavailableError as err:
        problems.append(str(err))
    if need_tensorrt and importlib.util.find_spec("tensorrt") is None:
        problems.append(f"the tensorrt Python package is not installed (pip install '{TENSORRT_PIP}')")
    return name, problems


def require_gpu(need_tensorrt: bool = True) -> str:
    """Name of CUDA device 0; GpuUnavailableError listing every missing piece otherwise.

    Checks the driver (libcuda.so.1 + cuInit), that a device exists and, when
    ``need_tensorrt``, that the ``tensorrt`` package is installed (not imported: fast).
    """
    name, problems = gpu_problems(need_tensorrt)
    if problems:
        raise GpuUnavailableError(
            "cannot build or run TensorRT engines here: " + "; ".join(problems) + f". {BUILD_HINT}."
        )
    return name


def import_tensorrt():
    """The tensorrt module (imported lazily), GpuUnavailableError if it is not installed."""
    try:
        import tensorrt  # noqa: PLC0415 (optional: GPU only)
    except ImportError as err:
        raise GpuUnavailableError(f"cannot import tensorrt ({err}). {BUILD_HINT}.") from None
    return tensorrt


def installed_tensorrt_version() -> str:
    """``tensorrt.__version__`` (imports tensorrt; GpuUnavailableError when it is missing)."""
    return import_tensorrt().__version__


def check_tensorrt_version(installed: str, pinned: str = TENSORRT_VERSION) -> None:
    """TensorRTVersionError unless ``installed`` equals ``pinned`` (engines are version-locked)."""
    if installed != pinned:
        raise TensorRTVersionError(
            f"tensorrt {installed} is installed but the serving image {TRITON_IMAGE} runs TensorRT {pinned}; "
            f"an engine only loads in the TensorRT that built it: pip install '{TENSORRT_PIP}'"
        )


def libnvinfer_version(
    search=("/usr/lib/x86_64-linux-gnu", "/usr/local/tensorrt/lib", "/opt/tensorrt/lib"),
) -> str | None:
    """Version in the name of the system libnvinfer.so.X.Y.Z (e.g. "10.8.0" in the Triton image), None if absent."""
    for directory in (Path(d) for d in search if Path(d).is_dir()):
        found = [lib.name.removeprefix("libnvinfer.so.") for lib in directory.glob("libnvinfer.so.*.*.*")]
        if found:
            return max(found, key=lambda v: [int(x) if x.isdigit() else -1 for x in v.split(".")])
    return None


def same_tensorrt_release(library_version: str, pinned: str = TENSORRT_VERSION) -> bool:
    """True if a libnvinfer file version (X.Y.Z, sometimes X.Y.Z.B) is the pinned X.Y.Z.B release."""
    lib, pin = library_version.split("."), pinned.split(".")
    return lib[:3] == pin[:3] and (len(lib) < 4 or lib[:4] == pin[:4])


# ---------------------------------------------------------------- torch's CUDA vs the driver


def torch_cuda_version() -> str | None:
    """CUDA version torch was built for ("13.0"), read from torch/version.py WITHOUT importing torch;
    None when torch is absent or a CPU build."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    found = (
        re.search(r"^cuda\b[^=]*=\s*'([\d.]+)'", version_file.read_text(), re.MULTILINE)
        if version_file.is_file()
        else None
    )
    return found.group(1) if found else None


def cuda_driver_problem(runtime: str, driver_cuda: tuple[int, int], what: str = "torch") -> str | None:
    """Why a CUDA ``runtime`` ("13.0") cannot run on a driver supporting CUDA ``driver_cuda`` ((12, 8)), or None.

    CUDA minor-version compatibility: a driver runs every runtime of its CUDA major version or older.
    """
    major = int(runtime.split(".")[0])
    if driver_cuda[0] >= major:
        return None
    need = DRIVER_BRANCH_FOR_CUDA.get(major, f"one supporting CUDA {major}")
    return (
        f"{what} is built for CUDA {runtime}, which needs NVIDIA driver {need} or newer; this driver supports "
        f"CUDA {driver_cuda[0]}.{driver_cuda[1]}: update the driver, or install a {what} build for "
        f"CUDA {driver_cuda[0]}.x"
    )


def check_torch_cuda(driver_cuda: tuple[int, int] | None = None) -> str | None:
    """CudaDriverError if the installed torch's CUDA is newer than the driver; returns torch's CUDA version."""
    runtime = torch_cuda_version()
    if runtime is None:
        return None
    driver_cuda = driver_cuda or CudaDriver().driver_cuda_version()
    problem = cuda_driver_problem(runtime, driver_cuda)
    if problem:
        raise CudaDriverError(problem)
    return runtime
