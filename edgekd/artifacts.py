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
import stat
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

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

# edgekd's own model checkpoints (edgekd.models.io): weights plus their record, one file each.
CHECKPOINT_SUFFIX = ".safetensors"


def checkpoint_file(stem: str) -> str:
    """`student` -> `student.safetensors`: the run-directory name of an edgekd model checkpoint."""
    return stem + CHECKPOINT_SUFFIX


TEACHER_CHECKPOINT = checkpoint_file("teacher")
STUDENT_CHECKPOINT = checkpoint_file("student")
QAT_CHECKPOINT = checkpoint_file("student.qat")  # student.quantization: qat, fake quantizers in place


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f) -> str:
    """SHA-256 of an open binary file, read in 1 MiB blocks (never whole into memory)."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def contained(root: str | Path, rel) -> Path:
    """The regular file `rel` names inside the folder `root`; ValueError (why not) otherwise.

    `rel` must be a relative POSIX path without empty, `.` or `..` parts, and no part of it
    may be a symlink. Every lstat made here is of a path inside `root`, so nothing outside it
    is ever opened, followed or described (bundles, run directories: docs/security.md).
    FileNotFoundError when a part is missing.
    """
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise ValueError("is not a plain relative path")
    parts = rel.split("/")
    if rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError("is absolute or leaves its folder ('..')")
    path = Path(root)
    for part in parts:
        path = path / part
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise ValueError("goes through a symlink")
    if not stat.S_ISREG(mode):
        raise ValueError("is not a regular file")
    return path


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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the `.partial` name to write `path` under; rename it into place when the block
    succeeds, remove it when anything fails (a full disk must not stay full of half a file)."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        remove_quietly(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # writes through file objects name no file
            exc.filename = str(path)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: dict[str, Any], sort_keys: bool = True) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


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
