"""What the GPU-path tests share: the real model's dims and whether this machine has an NVIDIA driver."""

from __future__ import annotations

import ctypes

import pytest

from sam3_spec import Dims

REAL = Dims(image_size=1008, patch=14, hidden=256, queries=200, text_hidden=1024)  # facebook/sam3


def gpu_present() -> bool:
    """True when libcuda (the NVIDIA driver) loads here."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


NO_GPU = pytest.mark.skipif(gpu_present(), reason="checks the refusal on machines without an NVIDIA driver")
