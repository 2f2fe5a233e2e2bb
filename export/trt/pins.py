"""Every version pin of the GPU path, in one place.

The serving image and the TensorRT that builds its engines must be the same release.
Source: Triton release compatibility matrix (triton-inference-server/server,
docs/introduction/compatibility.md): release 25.01 = Triton 2.54.0, TensorRT 10.8.0.43,
CUDA 12.8.0.038, driver ≥ 570 (data-center GPUs: R535/R545 with forward compatibility),
Python 3.12.3, ONNX Runtime 1.20.1. ``modal_triton.py`` checks the image's libnvinfer
against TENSORRT_VERSION when a container starts.

torch: 2.14.1 is the version whose torchvision (0.29.1) roi_align loads (docs/DESIGN notes).
Its default wheel is a CUDA 13.0 build (``torch/version.py``: ``cuda = '13.0'``), which needs
an NVIDIA driver that supports CUDA 13 (R580 or newer), while the Triton 25.01 image is CUDA
12.8 (R570). Export runs torch on the CPU, where this does not matter; code that runs torch on
the GPU checks the driver first (export.trt.env.check_torch_cuda) and says what to do.
"""

from __future__ import annotations

TRITON_RELEASE = "25.01"
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
TRITON_BINARY = "/opt/tritonserver/bin/tritonserver"
TRITON_CUDA = "12.8"  # CUDA of the Triton image (and of TensorRT 10.8's cu12 wheel)
TENSORRT_VERSION = "10.8.0.43"
TENSORRT_PIP = f"tensorrt-cu12=={TENSORRT_VERSION}"
PIN_SOURCE = "triton-inference-server/server docs/introduction/compatibility.md (release 25.01 row)"

# ONNX Runtime GPU for the fp32 reference of gpu-check: the release Triton 25.01 ships, whose
# default wheel is built for CUDA 12 + cuDNN 9 (both in the Triton image).
ONNXRUNTIME_GPU_PIP = "onnxruntime-gpu==1.20.1"

TORCH_PIP, TORCHVISION_PIP = "torch==2.14.1", "torchvision==0.29.1"
TRANSFORMERS_PIP = "transformers==5.23.0"  # the SAM3 classes; pyproject's export extra pins the same (tested)
# The GPU images' client matches their Triton (25.01 = 2.54.0); the local install (pyproject) pins the
# client of the bundled tritonserver 2.51.0 instead. Two servers, two clients: on purpose.
TRITONCLIENT_GPU_PIP = "tritonclient[grpc,http]==2.54.0"
TORCH_WHEEL_CUDA = "13.0"  # CUDA of TORCH_PIP's default wheel (stated; checked at run time)
# torch 2.14.1 requires setuptools ≥ 77.0.3. The Triton image's Debian/Ubuntu setuptools (68)
# has no RECORD file, so pip cannot uninstall it to upgrade: install beside it first
# (``pip install --ignore-installed``, see IMAGE_PIP_STEPS in modal_triton.py).
SETUPTOOLS_PIP = "setuptools>=77.0.3"

# Minimum NVIDIA driver branch per CUDA major version (CUDA minor-version compatibility: a
# driver of the branch runs every 12.x / 13.x runtime). Used in error messages.
DRIVER_BRANCH_FOR_CUDA = {12: "R525 (R570 for every CUDA 12.8 feature)", 13: "R580"}

# Python packages of the Modal images (modal_triton.py). Serving needs no transformers.
OPENCV_PIP = "opencv-python-headless>=4.8,<4.11"  # the orchestrator's mask resize; <4.11 keeps numpy<2 wheels
SERVING_PACKAGES = (
    "numpy<2",
    "pillow",
    "pyspng",
    "tokenizers",
    "pycocotools",
    OPENCV_PIP,
    "starlette",
    "uvicorn",
    "httpx",
    "onnxruntime",
    TRITONCLIENT_GPU_PIP,
    TORCH_PIP,
)
EXPORT_PACKAGES = (
    TORCH_PIP,
    TORCHVISION_PIP,
    TRANSFORMERS_PIP,
    "onnx==1.22.0",
    "onnxscript==0.7.2",
    "onnxruntime==1.32.0",
    "safetensors",
    "huggingface_hub",
    "tokenizers",
    "open_clip_torch",
    "numpy<2",
    "pillow",
    TENSORRT_PIP,
)
# gpu-check inside the Triton image: export + engines + the ONNX Runtime GPU reference + clients.
GPU_CHECK_PACKAGES = (
    TORCH_PIP,
    TORCHVISION_PIP,
    TRANSFORMERS_PIP,
    "onnx==1.22.0",
    "onnxscript==0.7.2",
    ONNXRUNTIME_GPU_PIP,
    "safetensors",
    "tokenizers",
    "open_clip_torch",
    "numpy<2",
    "pillow",
    "pyspng",
    "pycocotools",
    OPENCV_PIP,
    TRITONCLIENT_GPU_PIP,
    TENSORRT_PIP,
)
