"""The few CUDA runtime calls edgekd needs, through cuda-python (imported lazily).

cuda-python >= 12.6 exposes the runtime as ``cuda.bindings.runtime``; older
12.x releases only had ``cuda.cudart`` (removed in 13.0). Every call returns
a tuple ``(err, *values)``; `call` checks `err` and unwraps the values.
"""

from __future__ import annotations

import ctypes

import numpy as np

from edgekd.errors import RuntimeBackendError

_cudart = None


def cudart():
    """The cuda-python runtime module, or a RuntimeBackendError that says how to install it."""
    global _cudart
    if _cudart is None:
        try:
            from cuda.bindings import runtime as module
        except ImportError:
            try:
                from cuda import cudart as module  # cuda-python < 12.6
            except ImportError:
                raise RuntimeBackendError(
                    "cuda-python is not installed (edgekd uses it for GPU memory, streams and timing).",
                    'Install the TensorRT extra: pip install "edgekd[trt]" '
                    "(a cuda-python release matching the device's CUDA).",
                ) from None
        _cudart = module
    return _cudart


def call(result, what: str):
    """Check a cuda-python result tuple; return its value(s)."""
    rt = cudart()
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        detail = text.decode() if isinstance(text, bytes) else str(text)
        raise RuntimeBackendError(
            f"CUDA {what} failed: {detail} ({err}).", "Check that the GPU is free and healthy."
        )
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def handle(obj) -> int:
    """The raw address of a stream/event object (int(obj) is deprecated in cuda-bindings 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def device_info(device: int = 0) -> dict:
    """Name, compute capability and SM count of `device` (what an engine is tied to)."""
    props = call(cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return {
        "name": str(name).strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": int(props.multiProcessorCount),
    }


class PinnedBuffer:
    """Page-locked host memory viewed as a flat numpy array (fast, async-capable copies)."""

    def __init__(self, nbytes: int, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nbytes = int(nbytes)
        self.ptr = call(cudart().cudaMallocHost(self.nbytes), "cudaMallocHost")
        count = self.nbytes // self.dtype.itemsize
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=count)

    def free(self) -> None:
        if self.ptr:
            call(cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceBuffer:
    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = call(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc")

    def free(self) -> None:
        if self.ptr:
            call(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


def copy_async(dst: int, src: int, nbytes: int, to_device: bool, stream) -> None:
    rt = cudart()
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device else rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    call(rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")


def new_stream():
    return call(cudart().cudaStreamCreate(), "cudaStreamCreate")


def new_event():
    return call(cudart().cudaEventCreate(), "cudaEventCreate")


def record(event, stream) -> None:
    call(cudart().cudaEventRecord(event, stream), "cudaEventRecord")


def elapsed_ms(start, end) -> float:
    return float(call(cudart().cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))


def synchronize(event) -> None:
    call(cudart().cudaEventSynchronize(event), "cudaEventSynchronize")


def stream_synchronize(stream) -> None:
    call(cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize")


def destroy(stream=None, events=()) -> None:
    rt = cudart()
    for event in events:
        call(rt.cudaEventDestroy(event), "cudaEventDestroy")
    if stream is not None:
        call(rt.cudaStreamDestroy(stream), "cudaStreamDestroy")
