"""What machine a measurement was taken on (torch-free, imports no runtime).

Versions are read from installed package metadata, so asking for torch's or
tensorrt's version never imports them.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path

from edgekd import __version__

# Distribution names differ from module names, and Jetsons ship TensorRT and
# ONNX Runtime under several of them.
_PACKAGES = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "onnx": ("onnx",),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_lean"),
}


def machine_info() -> dict:
    """A JSON-able description of this machine and its software."""
    return {
        "hostname": socket.gethostname(),
        "device": device_model(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_mb": total_memory_mb(),
        "arch": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    found = {"edgekd": __version__, "python": platform.python_version()}
    for key, dists in _PACKAGES.items():
        for dist in dists:
            try:
                found[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def cpu_model() -> str:
    """The CPU's marketing name; on ARM boards /proc/cpuinfo often has none."""
    text = _read("/proc/cpuinfo")
    for key in ("model name", "Hardware", "Model", "cpu model"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def device_model() -> str | None:
    """Board name from the device tree (Raspberry Pi, Jetson), None on PCs."""
    text = _read("/proc/device-tree/model").rstrip("\x00").strip()
    return text or None


def total_memory_mb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:  # absent on macOS/Windows or in restricted containers
        return ""

