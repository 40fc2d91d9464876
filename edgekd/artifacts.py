"""Artifact files: hashes, atomic writes and sidecar JSON (torch-free).

Every artifact edgekd writes (`model.onnx`, `model.int8.onnx`, ...) gets a
sidecar `<artifact>.json` with the settings that produced it, package versions
and the artifact's sha256, so a file found later in a run directory explains
itself. Files are written under a temporary name in the same directory and
renamed into place, so a crash or a failed check never leaves a half-written
or unchecked file at the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekd import __version__

# What shapes an artifact or a measurement, by the name reported -> the distributions that provide it
# (Jetsons ship TensorRT and ONNX Runtime under several names).
_PACKAGES = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "timm": ("timm",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "onnxsim": ("onnxsim",),
    "onnxscript": ("onnxscript",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_lean"),
}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(path: str | Path, required: bool = False) -> dict:
    """The artifact's sidecar JSON as a dict. Without one: {} , or a DataError when `required`
    (an engine's sidecar is: it says which TensorRT and GPU the engine runs on)."""
    from edgekd.errors import DataError

    side = sidecar_path(path)
    if not side.is_file():
        if required:
            raise DataError(f"{Path(path).name} has no sidecar {side.name}.", "Re-create the artifact with edgekd.")
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"Sidecar {side} is not readable JSON ({exc}).", "Re-export the artifact or delete the sidecar.") from None
    if not isinstance(data, dict):
        raise DataError(f"Sidecar {side} holds a {type(data).__name__}, not an object.", "Re-export the artifact.")
    return data


def sidecar_path(path: str | Path) -> Path:
    """`model.onnx` -> `model.onnx.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def partial_path(path: str | Path) -> Path:
    """Where `path` is written before its checks pass (same directory, so rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = partial_path(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def remove_quietly(*paths: str | Path) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)


def versions(packages: tuple[str, ...] | None = None) -> dict[str, str]:
    """edgekd's, Python's and the installed versions of `packages` (default: everything that shapes an
    artifact or a measurement); absent ones are skipped. Read from package metadata, so asking for
    torch's or tensorrt's version never imports them (the device side stays torch-free)."""
    found = {"edgekd": __version__, "python": platform.python_version()}
    for name in packages or tuple(_PACKAGES):
        for dist in _PACKAGES.get(name, (name,)):
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found
