"""The two CPU runtimes a component model can run its ONNX graph in: OpenVINO and ONNX Runtime.

Both expose one interface, so the Triton model (model.py) and its load-time checks do not care
which one runs:

    runner.inputs() / runner.outputs()   [(name, Triton data type, rank)] of the graph
    runner.run(output_names, feeds, shared)  list of numpy arrays, in ``output_names`` order
                                         (``shared``: they may view buffers the next run overwrites)
    runner.precision                     "fp32" or "bf16": what the runtime really computes in

OpenVINO (the default): reads the .onnx file directly; ``INFERENCE_PRECISION_HINT`` is set
explicitly (f32 or bf16), because on CPUs with bf16 units OpenVINO's own default is bf16.
One stream, ``threads`` inference threads, no CPU pinning: every component is its own stub
process, and pinned threads of two processes would land on the same cores. ``CACHE_DIR`` keeps
compiled blobs, so a restart loads instead of recompiling; each precision and thread count has its
own subdirectory (``cache_subdir``), because OpenVINO's CPU plugin keys a blob by the graph and the
device only (its CACHING_PROPERTIES: FULL_DEVICE_NAME), not by the compile properties: a blob
compiled at f32 was loaded for a bf16 compile of the same graph (measured, OpenVINO 2026.4: the
prompt head's static copy then gave NaN masks and ran 40x slower). ``static_shapes`` ([{input: shape}],
the spec's most common sizes, -1 for an axis a copy leaves dynamic): one more copy compiled for each of
those shape sets runs the requests of that shape — OpenVINO's static-shape kernels were 8-33 % faster than its dynamic
ones on the bench model's graphs (auto mode's 16-point call in fp32: 130-152 against 154-167 ms)
— and every other shape runs in the dynamic copy. ``static_precisions`` (one per static copy, default
``precision``) lets a copy run at another precision than the dynamic graph: a copy that passed the bf16
gate at its own shapes runs bf16 beside a dynamic graph that failed it at others (export/precision.py).

ONNX Runtime: CPUExecutionProvider, fp32 only, ``threads`` intra-op threads, 1 inter-op thread.
This module imports neither runtime at import time.
"""

from __future__ import annotations

import fcntl
import threading
from contextlib import contextmanager
from pathlib import Path

PRECISIONS = ("fp32", "bf16")
RUNTIMES = ("openvino", "onnxruntime")
ORT_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
}
OV_TYPES = {
    "f32": "TYPE_FP32",
    "f16": "TYPE_FP16",
    "i64": "TYPE_INT64",
    "i32": "TYPE_INT32",
    "u8": "TYPE_UINT8",
    "boolean": "TYPE_BOOL",
}
OV_HINTS = {"fp32": "f32", "bf16": "bf16"}
_NUMPY_BRIDGE_LOCK = threading.Lock()


class RuntimeLoadError(RuntimeError):
    """The graph cannot be loaded in the requested runtime / precision."""


def effective_precision(runtime: str, precision: str, warn) -> str:
    """``precision``, or "fp32" when bf16 is asked of a CPU whose OpenVINO plugin lacks BF16 (``warn``, a
    callable taking a message, says so)."""
    if runtime != "openvino" or precision != "bf16":
        return precision
    capable, capabilities = bf16_capable()
    if capable:
        return precision
    warn(f"precision bf16 requested but this CPU's OpenVINO capabilities are {capabilities} (no BF16): running fp32")
    return "fp32"


def bf16_capable() -> tuple[bool, list[str]]:
    """(whether OpenVINO's CPU plugin lists BF16 among its capabilities, the capability list)."""
    import openvino as ov  # noqa: PLC0415 (optional: only the openvino runtime needs it)

    capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return "BF16" in capabilities, capabilities


def prime_numpy_bridge(ov) -> None:
    """Make OpenVINO's first element-type → numpy dtype conversion here, in one thread at a time.

    That conversion (``Type.to_dtype``, which every ``infer`` makes per input) fills a function-static
    table whose initializer drops the GIL (pybind11's ``gil_safe_call_once_and_store`` of the numpy API).
    Two threads making their first ``infer`` at once deadlock: one holds the static's guard and waits
    for the GIL, the other holds the GIL and waits for the guard (OpenVINO 2026.4: 11 of 40 fresh
    processes hung with two threads' first ``infer`` at once, 0 of 40 once primed). The orchestrator's
    heads run in a pool of threads, so their first two calls can be simultaneous: an auto request on a
    fresh server hung for good that way.
    """
    with _NUMPY_BRIDGE_LOCK:  # after the first call this is a lookup: no flag needed
        ov.Type.f32.to_dtype()


class OpenVinoRunner:
    """One ONNX graph compiled by OpenVINO for the CPU at ``precision`` ("fp32" | "bf16")."""

    def __init__(
        self,
        path: Path,
        precision: str,
        threads: int,
        cache_dir: str = "",
        static_shapes: list | None = None,
        static_precisions: list | None = None,
    ):
        import openvino as ov  # noqa: PLC0415 (optional: only the openvino runtime needs it)

        static_shapes = static_shapes or []
        static_precisions = static_precisions or [precision] * len(static_shapes)
        _check_precisions(precision, static_precisions, len(static_shapes))
        prime_numpy_bridge(ov)
        core = ov.Core()
        with compile_lock(cache_dir, Path(path)):
            # compiled from the path, so that a cache hit skips reading the ONNX file as well
            self.compiled = core.compile_model(str(path), "CPU", compile_properties(precision, threads, cache_dir))
            self.request = self.compiled.create_infer_request()
            ranks = {name: rank for name, _, rank in self.inputs()}
            # a graph that does not take these inputs fails the model's load check (names/dtypes/ranks) instead
            kept = [
                ({n: tuple(v) for n, v in shapes.items()}, p)
                for shapes, p in zip(static_shapes, static_precisions)
                if _fits(shapes, ranks)
            ]
            self.static_requests = [
                (shapes, self._static(core, path, compile_properties(p, threads, cache_dir), shapes))
                for shapes, p in kept
            ]
        self.precision = precision
        self.static_precisions = [p for _, p in kept]
        self.ov_version = ov.__version__

    @staticmethod
    def _static(core, path: Path, props: dict, shapes: dict):
        """An infer request of the graph reshaped to ``shapes`` (every other input keeps its shape)."""
        model = core.read_model(str(path))
        model.reshape({name: list(shape) for name, shape in shapes.items()})
        return core.compile_model(model, "CPU", props).create_infer_request()

    def inputs(self) -> list[tuple]:
        return [_ov_port(p) for p in self.compiled.inputs]

    def outputs(self) -> list[tuple]:
        return [_ov_port(p) for p in self.compiled.outputs]

    def request_for(self, feeds: dict):
        """The first static copy whose shapes ``feeds`` has (-1: any size), else the dynamic one."""
        for shapes, request in self.static_requests:
            if all(_matches(feeds[name].shape, shape) for name, shape in shapes.items()):
                return request
        return self.request

    def run(self, output_names: list[str], feeds: dict, shared: bool = False) -> list:
        """Outputs in ``output_names`` order. Inputs are shared (no copy: infer is synchronous). Outputs are
        fresh arrays, or with ``shared`` views of the infer request's own buffers, valid only until that
        request runs again: no copy, and no fresh pages per call for outputs too big for malloc's heap
        (the vision model's batch of 4: 42 MB of fpn_0; views ran 4-6 % faster per image offline on the bench
        model, within the VM's noise served)."""
        results = self.request_for(feeds).infer(feeds, share_inputs=True, share_outputs=shared)
        by_name = {name: array for port, array in results.items() for name in port.get_names()}
        return [by_name[n] for n in output_names]


def _check_precisions(precision: str, static_precisions: list, copies: int) -> None:
    """RuntimeLoadError unless every precision is known and there is one per static copy."""
    for p in [precision, *static_precisions]:
        if p not in PRECISIONS:
            raise RuntimeLoadError(f"precision must be one of {PRECISIONS}, got {p!r}")
    if len(static_precisions) != copies:
        raise RuntimeLoadError(f"{len(static_precisions)} static precisions for {copies} static copies")


def _matches(shape: tuple, static: tuple) -> bool:
    """Whether ``shape`` is one of the shapes of a static copy's input (``static``: -1 = any size)."""
    return len(shape) == len(static) and all(s in (-1, n) for n, s in zip(shape, static))


def _fits(shapes: dict, ranks: dict) -> bool:
    """Whether every input of ``shapes`` has the graph's rank (a static copy is compiled only then)."""
    return all(ranks.get(n) == len(v) for n, v in shapes.items())


def compile_properties(precision: str, threads: int, cache_dir: str = "") -> dict:
    """OpenVINO CPU compile properties: precision hint, 1 stream, ``threads`` (0 = OpenVINO's default), no pinning,
    and the model cache of this precision and thread count (none when ``cache_dir`` is "")."""
    props = {
        "INFERENCE_PRECISION_HINT": OV_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "ENABLE_CPU_PINNING": False,
    }
    if threads > 0:
        props["INFERENCE_NUM_THREADS"] = threads
    if cache_dir:
        props["CACHE_DIR"] = cache_subdir(cache_dir, precision, threads)
    return props


@contextmanager
def compile_lock(cache_dir: str, path: Path):
    """Hold ``cache_dir``/.lock-<graph file name> exclusively while this process compiles ``path`` with that model
    cache (nothing to hold without a cache). Two instances of one model (the cpu target's two sam3_prompt
    instances) compiled the same graph into an empty cache at once, and one failed to load: OpenVINO read the
    other's half-written blob, deleted it, and the writer's next step found no file ("filesystem error: cannot
    set permissions: No such file or directory [.../<hash>.blob]", seen at a first start). The second now
    waits, then loads the blobs the first wrote."""
    if not cache_dir:
        yield
        return
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cache_dir) / f".lock-{path.name}", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def cache_subdir(cache_dir: str, precision: str, threads: int) -> str:
    """``cache_dir``/<precision>-threads<N>: one OpenVINO model cache per set of compile properties (OpenVINO's
    own blob key ignores them): a compile property added to ``compile_properties`` must be named here too."""
    return str(Path(cache_dir) / f"{precision}-threads{threads or 'default'}")


def _ov_port(port) -> tuple:
    """(ONNX tensor name, Triton data type or the OpenVINO type name, rank) of a model port."""
    element = port.get_element_type().get_type_name()
    return port.get_any_name(), OV_TYPES.get(element, element), port.get_partial_shape().rank.get_length()


class OrtRunner:
    """One ONNX graph in an ONNX Runtime CPU session (fp32)."""

    precision = "fp32"
    static_requests = ()  # no static copies
    static_precisions = ()

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort  # noqa: PLC0415 (only the ort runtime needs it)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def inputs(self) -> list[tuple]:
        return [(a.name, ORT_TYPES.get(a.type, a.type), len(a.shape)) for a in self.session.get_inputs()]

    def outputs(self) -> list[tuple]:
        return [(a.name, ORT_TYPES.get(a.type, a.type), len(a.shape)) for a in self.session.get_outputs()]

    def run(self, output_names: list[str], feeds: dict, shared: bool = False) -> list:
        """Outputs in ``output_names`` order: always fresh arrays (``shared`` is OpenVINO's only)."""
        return self.session.run(output_names, feeds)


def open_runner(
    runtime: str,
    path: Path,
    precision: str,
    threads: int,
    cache_dir: str = "",
    static_shapes: list | None = None,
    static_precisions: list | None = None,
):
    """The runner of ``path``; raises RuntimeLoadError for a missing file or an impossible combination.
    ``static_shapes`` and ``static_precisions`` are used by OpenVINO only."""
    if not path.is_file():
        raise RuntimeLoadError(f"ONNX file {path} not found: regenerate the model repository")
    if runtime == "openvino":
        return OpenVinoRunner(path, precision, threads, cache_dir, static_shapes, static_precisions)
    if runtime == "onnxruntime":
        if precision != "fp32":
            raise RuntimeLoadError(f"ONNX Runtime runs these graphs in fp32 only, got precision {precision!r}")
        return OrtRunner(path, threads)
    raise RuntimeLoadError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
