"""Device profiles: what runtime a target has and what it must meet.

A profile is one YAML file (schema: `TargetProfile`); edgekd's own live in
`edgekd/builtin/targets/`, package data every install carries. It is
read on the workstation, to choose opset, precisions and ONNX variants, and on
the device, to set runtime threads and judge budgets, so this module is
torch-free.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgekd import BUILTIN_DIR
from edgekd.errors import ConfigError
from edgekd.schema import Strict, parse, read_yaml

Precision = Literal["fp32", "fp16", "int8"]
HOST_PATTERN = r"^([^@/:\s]+@)?[^@/:\s]+$"  # user@name or name: an ssh destination, no path or port


class Budgets(Strict):
    latency_ms: float = Field(50.0, gt=0, description="p50 latency at batch 1 must stay under this")
    memory_mb: float | None = Field(None, gt=0, description="peak resident memory over baseline")
    max_accuracy_drop: float = Field(0.02, ge=0, le=1, description="a student's accuracy may sit this much below the "
                                     "PyTorch teacher's (absolute, on the test split): the report's verdict")
    max_int8_drop: float = Field(0.02, ge=0, le=1, description="the INT8 gate for this target's INT8 file: its "
                                 "accuracy may sit this much below the FP32 student's (absolute, on the val split)")


class TensorRTInfo(Strict):
    """What the device's JetPack ships; decides the ONNX variant prepared for it."""

    version: str = Field(..., description="TensorRT major.minor on the device, e.g. '8.5', '10.3'")
    jetpack: str | None = None
    gpu: str | None = Field(None, description="GPU family, e.g. 'orin', 'xavier'")
    dla_core: int | None = Field(None, ge=0, description="run on this DLA core, GPU fallback on")

    @property
    def major_minor(self) -> tuple[int, int]:
        major, _, minor = self.version.partition(".")
        return int(major), int(minor or 0)


class TargetProfile(Strict):
    name: str
    description: str = ""
    runtime: Literal["onnxruntime", "tensorrt"]
    arch: Literal["x86_64", "aarch64"]
    cpu: str | None = None
    threads: int = Field(0, ge=0, description="intra-op threads; 0 lets the runtime choose")
    precisions: list[Precision] = Field(..., min_length=1)
    max_opset: int = Field(..., ge=11, le=25)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    budgets: Budgets = Budgets()
    tensorrt: TensorRTInfo | None = None
    # Where the device is, for measuring on it (`student.search`); all optional.
    host: str | None = Field(
        None, pattern=HOST_PATTERN,
        description="user@name of the device over ssh (keys or ssh-agent, no password prompt)")
    edgekd_command: str = Field(
        "python3 -m edgekd", min_length=1,
        description="how edgekd starts on the device over ssh, e.g. ~/venv/bin/edgekd")
    runtime_version: str | None = Field(
        None, pattern=r"^\d+(\.\d+)*$",
        description="the runtime version on the device, e.g. '1.18'; a latency table from another version is refused")

    @model_validator(mode="after")
    def _runtime_fields_agree(self) -> "TargetProfile":
        if self.runtime == "tensorrt" and self.tensorrt is None:
            raise ValueError("a tensorrt target needs a `tensorrt:` section with its `version`")
        if self.runtime == "onnxruntime" and "fp16" in self.precisions:
            raise ValueError("onnxruntime CPU targets support fp32 and int8, not fp16")
        return self


BUILTIN_TARGETS = BUILTIN_DIR / "targets"


def search_dirs() -> list[Path]:
    """Where profiles are looked up, first match wins: $EDGEKD_TARGETS (colon-separated),
    then the profiles shipped inside the package (the same in a checkout, an editable
    install and a wheel)."""
    dirs = [Path(p) for p in os.environ.get("EDGEKD_TARGETS", "").split(os.pathsep) if p]
    dirs.append(BUILTIN_TARGETS)
    return [d for d in dirs if d.is_dir()]


def available() -> dict[str, Path]:
    """Every profile name visible on this machine, mapped to its file."""
    found: dict[str, Path] = {}
    for directory in search_dirs():
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def load_target(name_or_path: str) -> TargetProfile:
    """A profile by name (`rpi5`) or by path (`./my-board.yaml`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return _load_file(str(path.resolve()))
    known = available()
    if name_or_path not in known:
        import difflib

        close = difflib.get_close_matches(name_or_path, list(known), n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"Unknown target {name_or_path!r}.",
            f"{hint}Known targets: {', '.join(sorted(known)) or '(none found)'}; "
            "`edgekd targets` lists them, or give a path to your own profile YAML.",
        )
    return _load_file(str(known[name_or_path]))


@lru_cache(maxsize=None)
def _load_file(path: str) -> TargetProfile:
    data = read_yaml(path, what="target profile")
    data.setdefault("name", Path(path).stem)
    return parse(TargetProfile, data, source=f"target profile {path}")


def strictest_opset(profiles: list[TargetProfile]) -> int:
    """The exported opset follows the strictest selected target."""
    return min(p.max_opset for p in profiles)
