"""The device side imports with numpy (+ tensorrt on a Jetson) only: no torch, no onnx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DEVICE_MODULES = [
    "edgekd.trt",
    "edgekd.trt.compat",
    "edgekd.trt.build",
    "edgekd.trt.engine",
    "edgekd.trt.cli",
]


def imported_after(modules: list[str]) -> set[str]:
    code = (
        "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sorted(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_device_modules_import_without_torch_or_onnx():
    loaded = imported_after(DEVICE_MODULES)
    assert "edgekd.trt.engine" in loaded
    for heavy in ("torch", "timm", "onnx", "onnxruntime", "tensorrt"):
        assert heavy not in loaded, f"{heavy} was imported by the device side"


def test_qdq_rules_import_without_torch():
    loaded = imported_after(
        ["edgekd.trt.build", "edgekd.trt.engine", "edgekd.trt.compat", "edgekd.onnxtools.trt_rules"]
    )
    assert "edgekd.onnxtools.trt_rules" in loaded
    assert "torch" not in loaded
