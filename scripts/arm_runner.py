"""Run one ONNX model on one input array and save its outputs (numpy + onnxruntime only).

scripts/arm_parity.py runs this same file twice: with the host's python (x86
onnxruntime) and inside the arm64 chroot (aarch64 onnxruntime under qemu), so
session settings, batching and dtype handling are identical on both sides and
only the CPU architecture and its kernels differ. Standard library, numpy and
onnxruntime only: the chroot has nothing else, not even edgekd.

    python arm_runner.py MODEL.onnx INPUTS.npy OUTPUTS.npz INFO.json SETTINGS_JSON
"""

from __future__ import annotations

import json
import os
import platform
import sys

import numpy as np
import onnxruntime as ort

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

# Linux aarch64 auxv bits (asm/hwcap.h): what the (emulated) CPU tells onnxruntime
# it has. ORT picks its int8 GEMM kernels from these when /proc and /sys are absent.
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP = {"asimddp": (_AT_HWCAP, 20), "fphp": (_AT_HWCAP, 9), "sve": (_AT_HWCAP, 22), "i8mm": (_AT_HWCAP2, 13)}


def make_session(model: str, settings: dict) -> ort.InferenceSession:
    """Same options as edgekd.runtime.ort.make_session, from `session_settings` data."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings["intra_op_num_threads"]
    opts.inter_op_num_threads = settings["inter_op_num_threads"]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = _OPT_LEVELS[settings["graph_optimization_level"]]
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """All outputs for all of `x`, run in chunks; a static-batch model one sample at a time."""
    inp = session.get_inputs()[0]
    x = x.astype(_DTYPES.get(inp.type, x.dtype), copy=False)
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch_size
    chunks = []
    for start in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[start : start + step])
        if fixed and len(chunk) < fixed:  # static batch larger than what is left
            chunks.extend(session.run(None, {inp.name: chunk[i : i + 1]}) for i in range(len(chunk)))
        else:
            chunks.append(session.run(None, {inp.name: chunk}))
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def cpu_features() -> dict:
    """aarch64 HWCAP flags via getauxval; empty elsewhere."""
    if platform.machine() != "aarch64" or not sys.platform.startswith("linux"):
        return {}
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    words = {at: libc.getauxval(at) for at in (_AT_HWCAP, _AT_HWCAP2)}
    return {name: bool(words[at] >> bit & 1) for name, (at, bit) in _HWCAP.items()}


def main(argv: list[str]) -> int:
    model, inputs, outputs, info_path, settings_json = argv
    settings = json.loads(settings_json)
    session = make_session(model, settings)
    results = run(session, np.load(inputs), settings.get("batch_size", 64))
    np.savez(outputs, *results)
    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "qemu_cpu": os.environ.get("QEMU_CPU"),
        "cpu_features": cpu_features(),
        "output_names": [o.name for o in session.get_outputs()],
    }
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
