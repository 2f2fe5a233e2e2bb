"""ONNX graphs → TensorRT engines (GPU only), checked against ONNX Runtime.

Everything that decides something is pure Python and runs anywhere (tested without a GPU):
optimization profiles from the spec, per-layer precision rules, engine file naming,
precision arguments, parity metrics. The TensorRT / CUDA glue is thin and imports
``tensorrt`` lazily, so this module imports on machines without TensorRT or a GPU; those
raise :class:`GpuUnavailableError` at once, saying what is missing and where to build.

Engines only load in the TensorRT version that built them, on the GPU model they were
tuned for, so they live in ``<root>/trt-<version>/<gpu name>/<component>.plan`` and the
version must equal :data:`TENSORRT_VERSION`, the one in the pinned Triton image.

CLI: ``python -m export.trt --artifacts DIR --out DIR`` (see :func:`main_trt`).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from export.manifest import ManifestError, sha256
from export.spec import COMPONENTS, ComponentSpec

# ---------------------------------------------------------------- pins (one place)
# The serving image and the TensorRT that builds its engines must be the same release.
# Source: Triton release compatibility matrix (triton-inference-server/server,
# docs/introduction/compatibility.md): release 25.01 = Triton 2.54.0, TensorRT 10.8.0.43,
# CUDA 12.8.0.038, driver ≥ 570 (data-center GPUs: R535/R545 with forward compatibility),
# Python 3.12.3, ONNX Runtime 1.20.1. `modal_triton.py` checks the image's libnvinfer
# against TENSORRT_VERSION when a container starts.
TRITON_RELEASE = "25.01"
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
TRITON_BINARY = "/opt/tritonserver/bin/tritonserver"
TENSORRT_VERSION = "10.8.0.43"
TENSORRT_PIP = f"tensorrt-cu12=={TENSORRT_VERSION}"
PIN_SOURCE = "triton-inference-server/server docs/introduction/compatibility.md (release 25.01 row)"

# ---------------------------------------------------------------- precision rules (data)
PRECISIONS = ("fp32", "fp16", "bf16")
# Default build precision per component. Softmax / normalizations / the reductions, Pow and
# Sqrt of decomposed norms stay FP32 in every reduced-precision engine (spec.fp32_layers),
# which is what keeps FP16 attention from overflowing. FP16 (10-bit mantissa) is more exact
# than BF16 (7-bit) once overflow is handled, so FP16 is the default everywhere; a component
# whose FP16 engine fails parity is rebuilt in FP32 (build_engines(fallback_fp32=True)).
DEFAULT_PRECISION = {"vision": "fp16", "text": "fp16", "concept": "fp16", "mask": "fp16", "prompt": "fp16"}


@dataclass(frozen=True)
class Tolerance:
    """An engine output passes if cosine ≥ min_cosine OR max |engine − onnx| ≤ atol.

    (The atol branch lets tiny outputs such as one presence logit pass on absolute error,
    where cosine of a 1-element vector only says whether the signs agree.)
    """

    min_cosine: float
    atol: float


PARITY_TOLERANCE = {"fp32": Tolerance(0.9999, 1e-3), "fp16": Tolerance(0.999, 1e-2), "bf16": Tolerance(0.995, 5e-2)}

# ONNX op (as named in ComponentSpec.fp32_layers) → TensorRT layer kinds it becomes.
# A kind is "<LayerType>" or "<LayerType>.<operation>" (see layer_kind()).
ONNX_OP_KINDS = {
    "Softmax": ("SOFTMAX",),
    "LayerNormalization": ("NORMALIZATION",),
    "GroupNormalization": ("NORMALIZATION",),
    "InstanceNormalization": ("NORMALIZATION",),
    "ReduceMean": ("REDUCE.AVG",),
    "ReduceSum": ("REDUCE.SUM",),
    "Pow": ("ELEMENTWISE.POW",),
    "Sqrt": ("UNARY.SQRT",),
    "Reciprocal": ("UNARY.RECIP",),
    "Erf": ("UNARY.ERF",),
    "Exp": ("UNARY.EXP",),
}

ENGINE_SUFFIX = ".plan"
RECORD_SUFFIX = ".plan.json"
ENGINES_SUMMARY = "engines.json"
TIMING_CACHE = "timing.cache"
DEFAULT_WORKSPACE_GIB = 8.0

Log = Callable[[str], None]


# ---------------------------------------------------------------- errors

class GpuUnavailableError(RuntimeError):
    """No usable NVIDIA GPU, driver or tensorrt package here; the message says what to do."""


class TensorRTVersionError(RuntimeError):
    """The installed TensorRT differs from TENSORRT_VERSION (engines would not load in Triton)."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build the engine; the message holds its errors."""


class EngineParityError(AssertionError):
    """Engine outputs differ from ONNX Runtime beyond tolerance; ``failures`` lists every one."""

    def __init__(self, component: str, failures: list[dict], rows: list[dict] | None = None):
        self.component, self.failures, self.rows = component, failures, rows or failures
        lines = "\n".join(f"  {r['sizes']:<22} {r['output']:<20} cosine={r['cosine']:.6f} "
                          f"max_abs={r['max_abs']:.3e} (need cosine ≥ {r['min_cosine']} or max_abs ≤ {r['atol']})"
                          for r in failures)
        super().__init__(f"{component} engine: {len(failures)} output(s) outside tolerance:\n{lines}")


# ---------------------------------------------------------------- profiles (pure)

def optimization_profile(spec: ComponentSpec) -> dict[str, tuple[tuple, tuple, tuple]]:
    """{input name: (min shape, opt shape, max shape)} for every input with a dynamic axis.

    Shapes come from ``spec.profiles`` through TensorSpec.resolve, so static dims are the
    spec's ints. Fully static inputs need no profile entry and are left out.
    """
    missing = sorted({a for t in spec.inputs for a in t.dynamic_axes().values()} - set(spec.profiles))
    if missing:
        raise ValueError(f"{spec.name}: dynamic axes {missing} have no Profile in the spec (export/spec.py)")
    sizes = [spec.sizes(which) for which in ("min", "opt", "max")]
    return {t.name: tuple(t.resolve(s) for s in sizes) for t in spec.inputs if t.dynamic_axes()}


# ---------------------------------------------------------------- precision (pure)

def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def fp32_kinds(fp32_ops: Sequence[str]) -> set[str]:
    """TensorRT layer kinds (see ONNX_OP_KINDS) of the ONNX ops listed in spec.fp32_layers."""
    return {kind for op in fp32_ops for kind in ONNX_OP_KINDS.get(op, ())}


def fp32_layer_types(spec: ComponentSpec) -> set[str]:
    """TensorRT layer kinds pinned to FP32 in reduced-precision engines of ``spec``."""
    return fp32_kinds(spec.fp32_layers)


def _op_token(layer_name: str) -> str:
    """ONNX op name inside a parser layer name: '/attn/Softmax_3' → 'softmax', 'node_Pow_12' → 'pow'."""
    last = re.split(r"[/.:]", layer_name)[-1]
    last = re.sub(r"^(node_|aten_)", "", last, flags=re.IGNORECASE)
    return re.sub(r"(_output)?(_\d+)*$", "", last).lower()


def layer_precision(kind: str, layer_name: str, fp32_ops: Sequence[str], precision: str) -> str:
    """Precision of one layer: "fp32" for the spec's fp32 ops (by kind or by name), else ``precision``.

    kind: "SOFTMAX", "REDUCE.AVG", "ELEMENTWISE.POW", ... (layer_kind()); layer_name: the
    TensorRT layer name, which the ONNX parser derives from the ONNX node name.
    """
    check_precision(precision)
    if precision == "fp32":
        return "fp32"
    if kind in fp32_kinds(fp32_ops) or _op_token(layer_name) in {op.lower() for op in fp32_ops}:
        return "fp32"
    return precision


def parse_precision(arg: str | Mapping[str, str] | None, components: Sequence[str]) -> dict[str, str]:
    """{component: precision}: DEFAULT_PRECISION overridden by ``arg``.

    arg: None (defaults), one precision for all ("fp16"), "vision=bf16,text=fp32", or a dict.
    """
    result = {c: DEFAULT_PRECISION.get(c, "fp16") for c in components}
    if arg is None or arg == "":
        return result
    if isinstance(arg, str) and "=" not in arg:
        return {c: check_precision(arg.strip()) for c in components}
    pairs = arg.items() if isinstance(arg, Mapping) else (p.split("=", 1) for p in arg.split(",") if p.strip())
    for name, value in pairs:
        name = name.strip()
        if name not in components:
            raise ValueError(f"precision given for {name!r}, which is not among the components {list(components)}")
        result[name] = check_precision(value.strip())
    return result


def check_components(components: Sequence[str] | str | None) -> list[str]:
    """Component names in COMPONENTS order (None or "" = all); ValueError naming unknown ones."""
    if components is None or components == "":
        return list(COMPONENTS)
    names = [c.strip() for c in components.split(",")] if isinstance(components, str) else list(components)
    unknown = [c for c in names if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {list(COMPONENTS)}")
    return [c for c in COMPONENTS if c in names]


# ---------------------------------------------------------------- files (pure)

def sanitize(name: str) -> str:
    """A path-safe name: runs of characters other than [A-Za-z0-9._-] become one '-'."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")
    if not clean:
        raise ValueError(f"cannot make a file name from {name!r}")
    return clean


def engine_dir(root: Path, trt_version: str, gpu_name: str) -> Path:
    """``root/trt-<version>/<gpu>``, e.g. root/trt-10.8.0.43/NVIDIA-H200."""
    return Path(root) / f"trt-{sanitize(trt_version)}" / sanitize(gpu_name)


def engine_path(directory: Path, component: str) -> Path:
    """``directory/<component>.plan`` (the name export.repository looks for)."""
    return Path(directory) / f"{sanitize(component)}{ENGINE_SUFFIX}"


def record_path(directory: Path, component: str) -> Path:
    """``directory/<component>.plan.json``: how the engine was built and its parity."""
    return Path(directory) / f"{sanitize(component)}{RECORD_SUFFIX}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename (no half-written engines)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def engine_is_current(directory: Path, component: str, onnx_sha256: str, precision: str, trt_version: str) -> bool:
    """True if the engine and its record exist, match these inputs, and the engine hash matches."""
    engine, record = engine_path(directory, component), record_path(directory, component)
    if not (engine.is_file() and record.is_file()):
        return False
    data = json.loads(record.read_text())
    wanted = {"onnx_sha256": onnx_sha256, "precision": precision, "tensorrt_version": trt_version}
    return all(data.get(k) == v for k, v in wanted.items()) and data.get("engine_sha256") == sha256(engine)


def load_timing_cache(path: Path) -> bytes:
    """Bytes of a TensorRT timing cache file, b"" when absent (TensorRT starts an empty one)."""
    path = Path(path)
    return path.read_bytes() if path.is_file() else b""


def save_timing_cache(path: Path, data: bytes) -> None:
    """Store the serialized timing cache atomically."""
    write_atomic(path, bytes(data))


# ---------------------------------------------------------------- parity metrics (pure)

def parity_metrics(expected: np.ndarray, actual: np.ndarray) -> dict:
    """{"cosine", "max_abs", "mean_abs", "shape_ok"} of two arrays (float64 math).

    Cosine of two all-zero arrays is 1; of a zero and a non-zero array 0. A shape
    mismatch gives cosine 0 and infinite differences.
    """
    a, b = np.asarray(expected, np.float64).ravel(), np.asarray(actual, np.float64).ravel()
    if np.shape(expected) != np.shape(actual):
        return {"cosine": 0.0, "max_abs": float("inf"), "mean_abs": float("inf"), "shape_ok": False}
    if a.size == 0:
        return {"cosine": 1.0, "max_abs": 0.0, "mean_abs": 0.0, "shape_ok": True}
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = 1.0 if na == nb == 0.0 else (0.0 if na == 0.0 or nb == 0.0 else float(a @ b / (na * nb)))
    d = np.abs(a - b)
    return {"cosine": cosine, "max_abs": float(d.max()), "mean_abs": float(d.mean()), "shape_ok": True}


def parity_row(sizes: dict, output: str, metrics: dict, tol: Tolerance) -> dict:
    """One JSON-ready comparison row with its verdict (see Tolerance)."""
    ok = bool(metrics["shape_ok"] and np.isfinite(metrics["max_abs"])
              and (metrics["cosine"] >= tol.min_cosine or metrics["max_abs"] <= tol.atol))
    label = ",".join(f"{k}={v}" for k, v in sizes.items())
    return {"sizes": label, "output": output, **metrics, "min_cosine": tol.min_cosine, "atol": tol.atol, "ok": ok}


# ---------------------------------------------------------------- CUDA driver (ctypes, no toolkit needed)

class CudaDriver:
    """Minimal CUDA driver API through ctypes (libcuda.so.1 ships with the NVIDIA driver).

    Used to detect the GPU without hanging or importing torch, and to hold device buffers
    for running engines. Raises GpuUnavailableError when there is no driver or no device.
    """

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as err:
            raise GpuUnavailableError(f"no NVIDIA driver here ({err})") from None
        self._call("cuInit", ctypes.c_uint(0))

    def _call(self, fn: str, *args) -> None:
        code = getattr(self.lib, fn)(*args)
        if code != 0:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(code, ctypes.byref(msg))
            text = msg.value.decode() if msg.value else "unknown error"
            raise GpuUnavailableError(f"CUDA driver call {fn} failed with {code} ({text})")

    def device_count(self) -> int:
        count = ctypes.c_int()
        self._call("cuDeviceGetCount", ctypes.byref(count))
        return count.value

    def device_name(self, index: int = 0) -> str:
        """Marketing name of device ``index``, e.g. "NVIDIA H200"."""
        device, name = ctypes.c_int(), ctypes.create_string_buffer(256)
        self._call("cuDeviceGet", ctypes.byref(device), ctypes.c_int(index))
        self._call("cuDeviceGetName", name, ctypes.c_int(256), device)
        return name.value.decode()

    def use_primary_context(self, index: int = 0) -> None:
        """Make device ``index``'s primary context current (the one TensorRT's runtime uses)."""
        device, ctx = ctypes.c_int(), ctypes.c_void_p()
        self._call("cuDeviceGet", ctypes.byref(device), ctypes.c_int(index))
        self._call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), device)
        self._call("cuCtxSetCurrent", ctx)

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        self._call("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1)))
        return ptr.value

    def free(self, ptr: int) -> None:
        self._call("cuMemFree_v2", ctypes.c_uint64(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        self._call("cuMemcpyHtoD_v2", ctypes.c_uint64(ptr), array.ctypes.data_as(ctypes.c_void_p),
                   ctypes.c_size_t(array.nbytes))

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._call("cuMemcpyDtoH_v2", array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr),
                   ctypes.c_size_t(array.nbytes))

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._call("cuStreamCreate", ctypes.byref(handle), ctypes.c_uint(0))
        return handle.value or 0

    def synchronize(self, stream: int) -> None:
        self._call("cuStreamSynchronize", ctypes.c_void_p(stream))

    def destroy_stream(self, stream: int) -> None:
        self._call("cuStreamDestroy_v2", ctypes.c_void_p(stream))


# ---------------------------------------------------------------- environment checks

BUILD_HINT = ("TensorRT engines are built on a machine with an NVIDIA GPU: run "
              "`modal run modal_triton.py::build` (docs/DEPLOY.md), or on a local GPU install "
              f"'{TENSORRT_PIP}' and run `python -m export trt`")


def require_gpu(need_tensorrt: bool = True) -> str:
    """Name of CUDA device 0; GpuUnavailableError listing every missing piece otherwise.

    Checks the driver (libcuda.so.1 + cuInit), that a device exists and, when
    ``need_tensorrt``, that the ``tensorrt`` package is installed (not imported: fast).
    """
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
    if problems:
        raise GpuUnavailableError("cannot build or run TensorRT engines here: " + "; ".join(problems)
                                  + f". {BUILD_HINT}.")
    return name


def _import_tensorrt():
    """The tensorrt module (imported lazily), GpuUnavailableError if it is not installed."""
    try:
        import tensorrt
    except ImportError as err:
        raise GpuUnavailableError(f"cannot import tensorrt ({err}). {BUILD_HINT}.") from None
    return tensorrt


def installed_tensorrt_version() -> str:
    """``tensorrt.__version__`` (imports tensorrt; GpuUnavailableError when it is missing)."""
    return _import_tensorrt().__version__


def check_tensorrt_version(installed: str, pinned: str = TENSORRT_VERSION) -> None:
    """TensorRTVersionError unless ``installed`` equals ``pinned`` (engines are version-locked)."""
    if installed != pinned:
        raise TensorRTVersionError(
            f"tensorrt {installed} is installed but the serving image {TRITON_IMAGE} runs TensorRT {pinned}; "
            f"an engine only loads in the TensorRT that built it: pip install '{TENSORRT_PIP}'")


def libnvinfer_version(search=("/usr/lib/x86_64-linux-gnu", "/usr/local/tensorrt/lib", "/opt/tensorrt/lib")) -> str | None:
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


# ---------------------------------------------------------------- TensorRT glue (GPU)

def layer_kind(layer, trt) -> str:
    """"SOFTMAX", "REDUCE.AVG", "ELEMENTWISE.POW", "UNARY.SQRT", ... for a TensorRT ILayer."""
    subclass = {trt.LayerType.ELEMENTWISE: trt.IElementWiseLayer, trt.LayerType.UNARY: trt.IUnaryLayer,
                trt.LayerType.REDUCE: trt.IReduceLayer}.get(layer.type)
    if subclass is None:
        return layer.type.name
    layer.__class__ = subclass  # TensorRT's documented downcast idiom for reading .op
    return f"{layer.type.name}.{layer.op.name}"


def apply_precision(network, config, spec: ComponentSpec, precision: str, trt) -> list[str]:
    """Set the precision flag; pin spec.fp32_layers to FP32 (layer + outputs); return pinned names."""
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TF32 matmuls
        return []
    floats = {trt.float32, trt.float16, trt.bfloat16}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if layer_precision(layer_kind(layer, trt), layer.name, spec.fp32_layers, precision) != "fp32":
            continue
        if not outputs or any(o.dtype not in floats for o in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def _check_network_io(network, spec: ComponentSpec) -> None:
    """EngineBuildError unless the parsed graph's inputs/outputs are exactly the spec's."""
    got_in = [network.get_input(i).name for i in range(network.num_inputs)]
    got_out = [network.get_output(i).name for i in range(network.num_outputs)]
    want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
        raise EngineBuildError(f"{spec.name}: ONNX graph has inputs {got_in} / outputs {got_out}, the spec says "
                               f"{want_in} / {want_out}; re-export with `python -m export onnx`")


def _parse_onnx(trt, builder, logger, onnx_path: Path, spec: ComponentSpec):
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    _check_network_io(network, spec)
    return network, parser


def _builder_config(trt, builder, spec: ComponentSpec, workspace_gib: float, opt_level: int):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in optimization_profile(spec).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    return config


def _progress_monitor(trt, log: Log, label: str):
    """A trt.IProgressMonitor that logs top-level build phases with elapsed seconds."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.start, self.depth = time.monotonic(), {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            if self.depth[phase_name] <= 1:
                log(f"  [{label} +{time.monotonic() - self.start:6.0f}s] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return Monitor()


def build_engine(onnx_path: Path, engine_file: Path, spec: ComponentSpec, precision: str, *,
                 timing_cache: Path | None = None, workspace_gib: float = DEFAULT_WORKSPACE_GIB,
                 opt_level: int = 3, log: Log = print) -> dict:
    """Build one engine from ``onnx_path`` into ``engine_file``; return facts for its record.

    The timing cache (if given) is loaded before and saved after the build, so later builds
    of the same layers on this GPU + TensorRT reuse measured tactics.
    """
    check_precision(precision)
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path, spec)  # parser must outlive the build
    config = _builder_config(trt, builder, spec, workspace_gib, opt_level)
    pinned = apply_precision(network, config, spec, precision, trt)
    cache = config.create_timing_cache(load_timing_cache(timing_cache) if timing_cache else b"")
    config.set_timing_cache(cache, False)  # False: a cache of another device is an error
    monitor = _progress_monitor(trt, log, spec.name)  # kept referenced for the whole build
    config.progress_monitor = monitor
    start = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {spec.name} ({precision}); see the TensorRT log above")
    write_atomic(engine_file, bytes(serialized))
    if timing_cache:
        save_timing_cache(timing_cache, config.get_timing_cache().serialize())
    return {"build_seconds": round(time.monotonic() - start, 1), "fp32_layers": len(pinned),
            "profile": {k: [list(s) for s in v] for k, v in optimization_profile(spec).items()}}


def _io_names(engine, mode) -> list[str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [n for n in names if engine.get_tensor_mode(n) == mode]


class EngineRunner:
    """One deserialized engine, its execution context and a CUDA stream on device 0.

    ``bind(feeds)`` copies host inputs to the GPU and allocates outputs, ``execute()`` runs
    the engine (returns seconds, synchronized), ``fetch()`` copies outputs back to host.
    """

    def __init__(self, engine_file: Path):
        require_gpu()
        self.trt = _import_tensorrt()
        self.cuda = CudaDriver()
        self.cuda.use_primary_context()
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise EngineBuildError(f"cannot deserialize {engine_file} (built by another TensorRT version or GPU?)")
        self.context, self.stream = self.engine.create_execution_context(), self.cuda.stream()
        self.buffers: list[int] = []
        self.outputs: dict[str, tuple[np.ndarray, int]] = {}

    def _device(self, name: str, host: np.ndarray) -> int:
        ptr = self.cuda.alloc(host.nbytes)
        self.buffers.append(ptr)
        self.context.set_tensor_address(name, ptr)
        return ptr

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        """Set input shapes and device buffers from host arrays (cast to the engine's dtypes)."""
        self._free()
        trt = self.trt
        for name in _io_names(self.engine, trt.TensorIOMode.INPUT):
            host = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_input_shape(name, host.shape)
            self.cuda.to_device(self._device(name, host), host)
        for name in _io_names(self.engine, trt.TensorIOMode.OUTPUT):
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.outputs[name] = (host, self._device(name, host))

    def execute(self) -> float:
        """Run once on the bound buffers; seconds from launch to stream synchronization."""
        start = time.perf_counter()
        if not self.context.execute_async_v3(self.stream):
            raise EngineBuildError("TensorRT execution failed; see the TensorRT log above")
        self.cuda.synchronize(self.stream)
        return time.perf_counter() - start

    def fetch(self) -> dict[str, np.ndarray]:
        """{output name: host copy} of the last execution."""
        for host, ptr in self.outputs.values():
            self.cuda.to_host(host, ptr)
        return {name: host.copy() for name, (host, _) in self.outputs.items()}

    def _free(self) -> None:
        for ptr in self.buffers:
            self.cuda.free(ptr)
        self.buffers, self.outputs = [], {}

    def close(self) -> None:
        self._free()
        self.cuda.destroy_stream(self.stream)

    def __enter__(self) -> "EngineRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_engine(engine_file: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a serialized engine once on host arrays ``feeds``; return {output name: host array}."""
    with EngineRunner(engine_file) as runner:
        runner.bind(feeds)
        runner.execute()
        return runner.fetch()


def latency_summary(seconds: Sequence[float]) -> dict:
    """{"iterations", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms"} of per-run seconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("latency_summary needs at least one timing")
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {"iterations": int(ms.size), "mean_ms": float(ms.mean()), "p50_ms": p50, "p90_ms": p90,
            "p99_ms": p99, "min_ms": float(ms.min())}


def engine_latency(engine_file: Path, spec: ComponentSpec, *, image_size: int, which: str = "opt",
                   iterations: int = 20, warmup: int = 3) -> dict:
    """Engine-only latency (GPU execute + sync, no copies) at the spec's min/opt/max sizes."""
    from export.inputs import example_inputs
    sizes = spec.sizes(which)
    with EngineRunner(engine_file) as runner:
        runner.bind(example_inputs(spec, sizes, image_size))
        for _ in range(warmup):
            runner.execute()
        summary = latency_summary([runner.execute() for _ in range(iterations)])
    return {"sizes": sizes, "warmup": warmup, **summary}


def onnx_session(onnx_path: Path):
    """A CPU ONNX Runtime session for ``onnx_path`` (the reference the engines are checked against)."""
    import onnxruntime as ort
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def run_onnx(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX Runtime session (or a path to an .onnx file) once; return {output name: array}."""
    if isinstance(session, (str, Path)):
        session = onnx_session(session)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def compare_engine(engine_file: Path, onnx_path: Path, spec: ComponentSpec, sizes: Sequence[dict] | None = None, *,
                   image_size: int, precision: str = "fp16", tolerance: Tolerance | None = None,
                   log: Log = print) -> list[dict]:
    """Engine vs ONNX Runtime on the same example inputs at each entry of ``sizes``.

    sizes: axis-size dicts (default ``spec.parity_sizes``); image_size: px of the model input
    (point coordinates are drawn inside it). Returns one row per (sizes, output) with cosine
    and max/mean abs diff; raises EngineParityError listing every row outside tolerance.
    """
    from export.inputs import example_inputs
    tol = tolerance or PARITY_TOLERANCE[check_precision(precision)]
    rows = []
    with EngineRunner(engine_file) as runner:  # first: refuses at once without GPU / TensorRT
        session = onnx_session(onnx_path)
        for i, s in enumerate(sizes or spec.parity_sizes):
            feeds = example_inputs(spec, s, image_size, seed=100 + i)
            runner.bind(feeds)
            runner.execute()
            expected, actual = run_onnx(session, feeds), runner.fetch()
            rows += [parity_row(s, t.name, parity_metrics(expected[t.name], actual.get(t.name, np.empty(0))), tol)
                     for t in spec.outputs]
    for r in rows:
        log(f"  parity {spec.name:<8} {r['sizes']:<22} {r['output']:<20} cosine={r['cosine']:.6f} "
            f"max_abs={r['max_abs']:.2e} {'ok' if r['ok'] else 'FAIL'}")
    failures = [r for r in rows if not r["ok"]]
    if failures:
        raise EngineParityError(spec.name, failures, rows)
    return rows


# ---------------------------------------------------------------- all components

@dataclass
class EngineBuild:
    """Result of build_engines: the directory holding <component>.plan and one record each."""

    engine_dir: Path
    gpu: str
    tensorrt_version: str
    records: dict[str, dict] = field(default_factory=dict)


def _build_checked(name, spec, onnx, target, precision, image_size, opts, log) -> dict:
    """Build one engine at ``precision`` and check it against ONNX Runtime (if opts['parity'])."""
    log(f"building {name} engine ({precision}) from {onnx.name} ...")
    facts = build_engine(onnx, engine_path(target, name), spec, precision, timing_cache=target / TIMING_CACHE,
                         workspace_gib=opts["workspace_gib"], opt_level=opts["opt_level"], log=log)
    log(f"built {name} in {facts['build_seconds']} s ({facts['fp32_layers']} layers pinned to fp32)")
    plan = engine_path(target, name)
    parity = compare_engine(plan, onnx, spec, image_size=image_size, precision=precision, log=log) if opts["parity"] else None
    latency = engine_latency(plan, spec, image_size=image_size)
    log(f"{name}: p50 {latency['p50_ms']:.2f} ms at {latency['sizes']} (engine only)")
    return {**facts, "precision": precision, "parity": parity, "latency": latency}


def _build_component(name, spec, artifacts, entry, target, precision, image_size, trt_version, gpu, opts, log) -> dict:
    onnx = artifacts / entry["file"]
    if not opts["force"] and engine_is_current(target, name, entry["sha256"], precision, trt_version):
        log(f"{name}: engine up to date ({engine_path(target, name)}), skipped")
        return json.loads(record_path(target, name).read_text())
    try:
        facts = _build_checked(name, spec, onnx, target, precision, image_size, opts, log)
    except EngineParityError as err:
        if not opts["fallback_fp32"] or precision == "fp32":
            raise
        log(f"{name}: {precision} engine failed parity ({len(err.failures)} outputs); rebuilding in fp32")
        facts = _build_checked(name, spec, onnx, target, "fp32", image_size, opts, log)
        facts["requested_precision"] = precision
    record = {"component": name, "onnx": entry["file"], "onnx_sha256": entry["sha256"], "tensorrt_version": trt_version,
              "gpu": gpu, "engine_sha256": sha256(engine_path(target, name)), **facts,
              "precision": precision}  # the key engine_is_current compares: what was asked for
    record["built_precision"] = facts["precision"]
    write_atomic(record_path(target, name), (json.dumps(record, indent=2) + "\n").encode())
    return record


def build_engines(artifacts_dir: Path, out_root: Path | None = None, components: Sequence[str] | str | None = None,
                  precision: str | Mapping[str, str] | None = None, *, workspace_gib: float = DEFAULT_WORKSPACE_GIB,
                  opt_level: int = 3, parity: bool = True, fallback_fp32: bool = True, force: bool = False,
                  require_pinned_version: bool = True, log: Log = print) -> EngineBuild:
    """Build (or reuse) one TensorRT engine per component from ``artifacts_dir`` (python -m export onnx).

    Engines go to engine_dir(out_root, <tensorrt version>, <gpu name>) (out_root defaults to
    ``artifacts_dir/engines``); an engine whose record
    matches the ONNX sha256, precision and TensorRT version is reused unless ``force``. Each new
    engine is compared with ONNX Runtime (EngineParityError on failure; with ``fallback_fp32`` a
    reduced-precision engine that fails is rebuilt once in fp32). Arguments are checked before
    the GPU; without a GPU this raises GpuUnavailableError at once.
    """
    from export.manifest import load_manifest
    names = check_components(components)
    precisions = parse_precision(precision, names)
    gpu = require_gpu()
    trt_version = installed_tensorrt_version()
    if require_pinned_version:
        check_tensorrt_version(trt_version)
    artifacts = Path(artifacts_dir)
    manifest = load_manifest(artifacts, check_hashes=True)
    specs = manifest.specs()
    absent = [n for n in names if n not in specs]
    if absent:
        raise ValueError(f"components {absent} are not in {artifacts}/manifest.json (exported: {list(specs)})")
    target = engine_dir(out_root or artifacts / "engines", trt_version, gpu)
    target.mkdir(parents=True, exist_ok=True)
    log(f"TensorRT {trt_version} on {gpu}: engines → {target}")
    opts = dict(workspace_gib=workspace_gib, opt_level=opt_level, parity=parity, fallback_fp32=fallback_fp32, force=force)
    result = EngineBuild(target, gpu, trt_version)
    for name in names:
        result.records[name] = _build_component(name, specs[name], artifacts, manifest.components[name], target,
                                                precisions[name], manifest.dims.image_size, trt_version, gpu, opts, log)
    write_atomic(target / ENGINES_SUMMARY, (json.dumps(result.records, indent=2) + "\n").encode())
    return result


# ---------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export trt", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", required=True, type=Path, help="dir written by `python -m export onnx`")
    p.add_argument("--out", type=Path, help="engine root (default: <artifacts>/engines); "
                   "engines go to <out>/trt-<version>/<gpu>/<component>.plan")
    p.add_argument("--components", default="", help=f"comma list from {list(COMPONENTS)} (default: all)")
    p.add_argument("--precision", default="", help="fp32|fp16|bf16 for all, or vision=fp16,prompt=fp32 "
                   f"(default {DEFAULT_PRECISION})")
    p.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_GIB)
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0-5")
    p.add_argument("--no-parity", action="store_true", help="skip the engine vs ONNX Runtime check")
    p.add_argument("--no-fallback", action="store_true", help="do not rebuild a failing fp16/bf16 engine in fp32")
    p.add_argument("--force", action="store_true", help="rebuild engines that are up to date")
    p.add_argument("--any-tensorrt", action="store_true",
                   help=f"allow a TensorRT other than {TENSORRT_VERSION} (engines then won't load in {TRITON_IMAGE})")
    return p


def main_trt(argv: Sequence[str] | None = None) -> int:
    """``python -m export trt`` entry point; returns the exit status (2 = no GPU / bad input)."""
    args = _parser().parse_args(argv)
    try:
        result = build_engines(args.artifacts, args.out, args.components or None,
                               args.precision or None, workspace_gib=args.workspace_gib, opt_level=args.opt_level,
                               parity=not args.no_parity, fallback_fp32=not args.no_fallback, force=args.force,
                               require_pinned_version=not args.any_tensorrt)
    except (GpuUnavailableError, TensorRTVersionError, ManifestError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (EngineBuildError, EngineParityError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"engines ready in {result.engine_dir}: " + ", ".join(
        f"{k} ({r['built_precision']})" for k, r in result.records.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main_trt())
