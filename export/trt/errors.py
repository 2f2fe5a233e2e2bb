"""The errors of the TensorRT path; each message says what is wrong and what to do."""

from __future__ import annotations


class GpuUnavailableError(RuntimeError):
    """No usable NVIDIA GPU, driver or tensorrt package here; the message says what to do."""


class TensorRTVersionError(RuntimeError):
    """The installed TensorRT differs from TENSORRT_VERSION (engines would not load in Triton)."""


class CudaDriverError(GpuUnavailableError):
    """The NVIDIA driver is too old for a CUDA runtime that will run here (e.g. torch's wheel)."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build the engine; the message holds its errors."""


class EngineParityError(AssertionError):
    """Engine outputs differ from ONNX Runtime beyond tolerance; ``failures`` lists every one."""

    def __init__(self, component: str, failures: list[dict], rows: list[dict] | None = None):
        self.component, self.failures, self.rows = component, failures, rows or failures
        lines = "\n".join(
            f"  {r['sizes']:<22} {r['output']:<20} cosine={r['cosine']:.6f} "
            f"max_abs={r['max_abs']:.3e} (need cosine ≥ {r['min_cosine']} or max_abs ≤ {r['atol']})"
            for r in failures
        )
        super().__init__(f"{component} engine: {len(failures)} output(s) outside tolerance:\n{lines}")
