"""Minimal CUDA driver API through ctypes: detect the GPU and hold device buffers.

libcuda.so.1 ships with the NVIDIA driver, so this needs no CUDA toolkit, no torch and no
tensorrt; it never hangs on a machine without a GPU (the library is simply absent).
"""

from __future__ import annotations

import ctypes

import numpy as np

from export.trt.errors import GpuUnavailableError


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

    def driver_cuda_version(self) -> tuple[int, int]:
        """(major, minor) of the newest CUDA this driver supports, e.g. (12, 8) (cuDriverGetVersion)."""
        version = ctypes.c_int()
        self._call("cuDriverGetVersion", ctypes.byref(version))
        return version.value // 1000, (version.value % 1000) // 10

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
        self._call(
            "cuMemcpyHtoD_v2",
            ctypes.c_uint64(ptr),
            array.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_size_t(array.nbytes),
        )

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._call(
            "cuMemcpyDtoH_v2",
            array.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_uint64(ptr),
            ctypes.c_size_t(array.nbytes),
        )

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._call("cuStreamCreate", ctypes.byref(handle), ctypes.c_uint(0))
        return handle.value or 0

    def synchronize(self, stream: int) -> None:
        self._call("cuStreamSynchronize", ctypes.c_void_p(stream))

    def destroy_stream(self, stream: int) -> None:
        self._call("cuStreamDestroy_v2", ctypes.c_void_p(stream))


def nvidia_driver_version() -> str | None:
    """The driver's version string (e.g. "570.124.06") from NVML, None when NVML is absent."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    buffer = ctypes.create_string_buffer(96)
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        return buffer.value.decode() if nvml.nvmlSystemGetDriverVersion(buffer, ctypes.c_uint(96)) == 0 else None
    finally:
        nvml.nvmlShutdown()
