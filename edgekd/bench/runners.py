"""Runners: load one artifact and run a batch through it. A name -> backend table.

A runner is any object with `run(x: np.ndarray) -> np.ndarray` taking a
float32 (N, C, H, W) batch and returning (N, classes). Optional attributes
tell the benchmark what it accepts:

    fixed_batch: int | None       the only batch size the artifact takes
    min_batch, max_batch: int     the batch range of a TensorRT engine's profile
    input_shape: tuple | None     (C, H, W) when the artifact fixes it

Each backend is split in two so the worker can take its memory baseline
between them: `import_runtime()` (the runtime library's fixed cost, paid by
any app on the device) and `load(path, target, threads)` (the model's cost).
Runtime libraries are imported inside those functions, never at module
level: this module is imported on devices that have only one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from edgekd.errors import RuntimeBackendError
from edgekd.runtime.batches import run_in_batches

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile


class Runner(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Backend:
    name: str
    import_runtime: Callable[[], None]
    load: Callable[[Path, "TargetProfile | None", "int | None"], Runner]


# ----------------------------------------------------------------- onnxruntime
class OrtRunner:
    def __init__(self, path: Path, target, threads):
        from edgekd.runtime.ort import make_session

        self.session = make_session(path, target=target, threads=threads)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        # fp16 ONNX files keep float32 inputs by design; honour the file if not.
        self.dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        dims = list(first.shape)
        self.fixed_batch = dims[0] if isinstance(dims[0], int) else None
        static = all(isinstance(d, int) for d in dims[1:])
        self.input_shape = tuple(dims[1:]) if static else None
        self.providers = self.session.get_providers()

    def run(self, x: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(x, dtype=self.dtype)}
        return self.session.run(None, feed)[0]


def _import_ort() -> None:
    from edgekd.runtime.ort import import_ort

    import_ort()


# --------------------------------------------------------------------- pytorch
class TorchRunner:
    """An edgekd checkpoint in eager PyTorch (the workstation baseline)."""

    fixed_batch = None
    input_shape = None

    def __init__(self, path: Path, target, threads):
        import torch

        from edgekd.models.io import load_model

        if threads is None:
            threads = target.threads if target is not None else 0
        if threads > 0:  # 0 keeps torch's own default, as for ONNX Runtime
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = load_model(path)

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _import_torch() -> None:
    # timm and the checkpoint reader belong to the fixed cost too: the model's own
    # load time and memory should not include importing a model zoo.
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401

        import edgekd.models.io  # noqa: F401
    except ImportError:
        raise RuntimeBackendError(
            "The pytorch runner needs torch and timm, which are not installed here.",
            'Benchmark the ONNX artifacts on this machine, or install "edgekd[train]".',
        ) from None


# -------------------------------------------------------------------- tensorrt
def _import_trt() -> None:
    try:
        import tensorrt  # noqa: F401

        import edgekd.trt.engine  # noqa: F401
    except ImportError as exc:
        raise RuntimeBackendError(
            f"The tensorrt runner is not available here ({exc}).",
            'Run on a Jetson with JetPack\'s TensorRT and install "edgekd[trt]".',
        ) from None


def _load_trt(path: Path, target, threads) -> Runner:
    from edgekd.trt.engine import load_runner

    return load_runner(path)


BACKENDS: dict[str, Backend] = {
    "onnxruntime": Backend("onnxruntime", _import_ort, OrtRunner),
    "pytorch": Backend("pytorch", _import_torch, TorchRunner),
    "tensorrt": Backend("tensorrt", _import_trt, _load_trt),
}

_SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".safetensors": "pytorch",
             ".pt": "pytorch", ".pth": "pytorch"}  # .pt/.pth: edgekd checkpoints of earlier versions


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise RuntimeBackendError(
            f"Unknown runtime {name!r}.", f"Use one of: {', '.join(sorted(BACKENDS))}."
        )
    return BACKENDS[name]


def runtime_for_path(path: str | Path) -> str:
    """The runtime an artifact file belongs to, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise RuntimeBackendError(
            f"Cannot tell which runtime runs {Path(path).name!r}.",
            f"Known suffixes: {', '.join(sorted(_SUFFIXES))}.",
        )
    return _SUFFIXES[suffix]


def supports_batch(runner: Runner, batch_size: int) -> bool:
    """Whether one `run` call of `batch_size` samples is one call of the artifact at that batch."""
    fixed = getattr(runner, "fixed_batch", None)
    low, high = getattr(runner, "min_batch", None), getattr(runner, "max_batch", None)
    if fixed is not None and batch_size != fixed:
        return False
    return (low is None or batch_size >= low) and (high is None or batch_size <= high)


def predict(runner: Runner, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits (N, classes) for x (N, C, H, W), in the largest batches the runner takes."""
    return run_in_batches(runner.run, x, fixed=getattr(runner, "fixed_batch", None),
                          limit=getattr(runner, "max_batch", None), batch_size=batch_size)
