"""Run serialized engines on the GPU (CUDA driver buffers, no torch) and check them against ONNX Runtime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from export.inputs import example_inputs
from export.trt.cuda import CudaDriver
from export.trt.env import import_tensorrt, require_gpu
from export.trt.errors import EngineBuildError, EngineParityError
from export.trt.metrics import latency_summary, parity_metrics, parity_row
from export.trt.rules import PARITY_TOLERANCE, Tolerance, check_precision
from sam3_spec import ComponentSpec

Log = Callable[[str], None]


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
        self.trt = import_tensorrt()
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


def engine_latency(
    engine_file: Path,
    spec: ComponentSpec,
    *,
    image_size: int,
    which: str = "opt",
    sizes: dict | None = None,
    iterations: int = 20,
    warmup: int = 3,
) -> dict:
    """Engine-only latency (GPU execute + sync, no copies) at ``sizes`` (default: the spec's ``which`` sizes)."""
    sizes = dict(sizes) if sizes is not None else spec.sizes(which)
    with EngineRunner(engine_file) as runner:
        runner.bind(example_inputs(spec, sizes, image_size))
        for _ in range(warmup):
            runner.execute()
        summary = latency_summary([runner.execute() for _ in range(iterations)])
    return {"sizes": sizes, "warmup": warmup, **summary}


def reference_providers(available: Sequence[str]) -> list:
    """ONNX Runtime providers for the fp32 reference: CUDA with TF32 off when the installed
    onnxruntime has it (onnxruntime-gpu), else the CPU."""
    if "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(onnx_path: Path, gpu: bool = False):
    """An fp32 ONNX Runtime session for ``onnx_path`` (the reference engines are checked against);
    on the CPU unless ``gpu`` and the installed onnxruntime has the CUDA provider."""
    import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime)

    providers = reference_providers(ort.get_available_providers()) if gpu else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(onnx_path), providers=providers)


def run_onnx(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX Runtime session (or a path to an .onnx file) once; return {output name: array}."""
    if isinstance(session, (str, Path)):
        session = onnx_session(session)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def compare_engine(
    engine_file: Path,
    onnx_path: Path,
    spec: ComponentSpec,
    sizes: Sequence[dict] | None = None,
    *,
    image_size: int,
    precision: str = "fp16",
    tolerance: Tolerance | None = None,
    reference_on_gpu: bool = False,
    log: Log = print,
) -> list[dict]:
    """Engine vs ONNX Runtime on the same example inputs at each entry of ``sizes``.

    sizes: axis-size dicts (default ``spec.parity_sizes``); image_size: px of the model input
    (point coordinates are drawn inside it). Returns one row per (sizes, output) with cosine
    and max/mean abs diff; raises EngineParityError listing every row outside tolerance.
    """
    tol = tolerance or PARITY_TOLERANCE[check_precision(precision)]
    rows = []
    with EngineRunner(engine_file) as runner:  # first: refuses at once without GPU / TensorRT
        session = onnx_session(onnx_path, gpu=reference_on_gpu)
        for i, s in enumerate(sizes or spec.parity_sizes):
            feeds = example_inputs(spec, s, image_size, seed=100 + i)
            runner.bind(feeds)
            runner.execute()
            expected, actual = run_onnx(session, feeds), runner.fetch()
            rows += [
                parity_row(s, t.name, parity_metrics(expected[t.name], actual.get(t.name, np.empty(0))), tol)
                for t in spec.outputs
            ]
    for r in rows:
        log(
            f"  parity {spec.name:<8} {r['sizes']:<22} {r['output']:<20} cosine={r['cosine']:.6f} "
            f"max_abs={r['max_abs']:.2e} {'ok' if r['ok'] else 'FAIL'}"
        )
    failures = [r for r in rows if not r["ok"]]
    if failures:
        raise EngineParityError(spec.name, failures, rows)
    return rows
