"""ONNX Runtime sessions configured from a target profile (torch-free).

onnxruntime is an optional extra (`edgekd[ort]`), so it is imported inside the
functions that need it and a missing install is a RuntimeBackendError.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.errors import RuntimeBackendError
from edgekd.runtime.batches import run_in_batches

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

    from edgekd.targets import TargetProfile

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeBackendError(
            "onnxruntime is not installed.",
            'Install the runtime extra: pip install "edgekd[ort]".',
        ) from None
    return onnxruntime


def session_settings(target: "TargetProfile | None", threads: int | None = None) -> dict:
    """The session options edgekd uses, as plain data (saved with artifacts)."""
    if threads is None:
        threads = target.threads if target is not None else 0
    level = target.graph_optimization_level if target is not None else "all"
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "graph_optimization_level": level,
        "execution_mode": "sequential",
        "providers": ["CPUExecutionProvider"],
    }


def make_session(
    onnx_path: str | Path,
    target: "TargetProfile | None" = None,
    threads: int | None = None,
) -> "onnxruntime.InferenceSession":
    ort = import_ort()
    settings = session_settings(target, threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings["intra_op_num_threads"]
    opts.inter_op_num_threads = settings["inter_op_num_threads"]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPT_LEVELS[settings["graph_optimization_level"]]
    )
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    path = Path(onnx_path)
    if not path.is_file():
        raise RuntimeBackendError(f"ONNX file {str(path)!r} does not exist.", "Check the path.")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=settings["providers"])
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise RuntimeBackendError(
            f"ONNX Runtime could not load {path.name}: {exc}",
            "Re-export the model; if it targets an older runtime, lower `export.opset`.",
        ) from None


def predict(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run `x` (N, C, H, W float32) through a single-input session, returns (N, classes)."""
    name = session.get_inputs()[0].name

    def run(chunk: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(chunk, dtype=np.float32)})[0]

    return run_in_batches(run, x, fixed=_fixed_batch(session), batch_size=batch_size)


def _fixed_batch(session) -> int | None:
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())
