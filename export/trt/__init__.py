"""ONNX graphs → TensorRT engines (GPU only), checked against ONNX Runtime.

One job per module:

    pins      every version pin of the GPU path (Triton image ↔ TensorRT, torch, ONNX Runtime GPU)
    rules     precision rule sets as data and the order the parity gate tries them (pure)
    files     engine / record / timing-cache paths (pure)
    metrics   cosine, max abs diff, latency percentiles (pure)
    cuda      the CUDA driver API through ctypes (no toolkit, no torch)
    env       what this machine has: GPU, driver, TensorRT version, torch's CUDA
    runtime   run engines, compare them with ONNX Runtime, time them
    build     build engines through the parity gate (build errors fall back like parity failures)
    cli       ``python -m export trt`` / ``python -m export.trt``

Everything that decides something is pure Python and runs anywhere (tested without a GPU);
the TensorRT / CUDA glue imports ``tensorrt`` lazily, so this package imports on machines
without TensorRT or a GPU, and those raise :class:`GpuUnavailableError` at once, saying what
is missing and where to build. This module re-exports the public names of the submodules.
"""

from export.trt.build import (
    DEFAULT_WORKSPACE_GIB,
    EngineBuild,
    apply_precision,
    build_engine,
    build_engines,
    first_passing,
    layer_kind,
    optimization_profile,
)
from export.trt.cli import main_trt
from export.trt.cuda import CudaDriver, nvidia_driver_version
from export.trt.env import (
    BUILD_HINT,
    check_tensorrt_version,
    check_torch_cuda,
    cuda_driver_problem,
    gpu_problems,
    import_tensorrt,
    installed_tensorrt_version,
    libnvinfer_version,
    require_gpu,
    same_tensorrt_release,
    torch_cuda_version,
)
from export.trt.errors import (
    CudaDriverError,
    EngineBuildError,
    EngineParityError,
    GpuUnavailableError,
    TensorRTVersionError,
)
from export.trt.files import (
    ENGINE_SUFFIX,
    ENGINES_SUMMARY,
    RECORD_SUFFIX,
    TIMING_CACHE,
    engine_dir,
    engine_is_current,
    engine_path,
    load_timing_cache,
    record_path,
    sanitize,
    save_timing_cache,
    write_atomic,
)
from export.trt.metrics import latency_summary, parity_metrics, parity_row
from export.trt.pins import (
    EXPORT_PACKAGES,
    GPU_CHECK_PACKAGES,
    ONNXRUNTIME_GPU_PIP,
    PIN_SOURCE,
    SERVING_PACKAGES,
    SETUPTOOLS_PIP,
    TENSORRT_PIP,
    TENSORRT_VERSION,
    TORCH_PIP,
    TORCH_WHEEL_CUDA,
    TRITON_BINARY,
    TRITON_CUDA,
    TRITON_IMAGE,
    TRITON_RELEASE,
)
from export.trt.rules import (
    DEFAULT_LADDER,
    DEFAULT_PRECISION,
    FP32_RULES,
    ONNX_OP_KINDS,
    PARITY_TOLERANCE,
    PRECISIONS,
    RULE_SETS,
    Attempt,
    PrecisionRules,
    Tolerance,
    attempts,
    attempts_key,
    check_components,
    check_precision,
    fp32_kinds,
    fp32_nodes,
    ladder,
    layer_precision,
    node_of_layer,
    onnx_nodes_of,
    parse_precision,
)
from export.trt.runtime import (
    EngineRunner,
    compare_engine,
    engine_latency,
    onnx_session,
    reference_providers,
    run_engine,
    run_onnx,
)
