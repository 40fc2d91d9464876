"""What machine a measurement was taken on (torch-free, imports no runtime).

Versions are read from installed package metadata, so asking for torch's or
tensorrt's version never imports them.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from edgekd.artifacts import versions  # re-exported: what a measurement ran with


def machine_info() -> dict:
    """A JSON-able description of this machine and its software."""
    return {
        "hostname": socket.gethostname(),
        "device": device_model(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_mb": total_memory_mb(),
        "arch": host_arch(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


_ARCH_NAMES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def host_arch() -> str:
    """This machine's architecture in target-profile terms (x86_64, aarch64)."""
    machine = platform.machine()
    return _ARCH_NAMES.get(machine.lower(), machine)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which a container or taskset may limit."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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

