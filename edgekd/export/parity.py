"""Does the ONNX file compute what the PyTorch model computes? (PyTorch vs ONNX Runtime)

Compared on real validation samples, on the logits: the largest absolute
difference and how often the top-1 class agrees. The default tolerances depend
on what the ONNX file holds: the "export" row of edgekd.tolerances (one table
with the device check of `edgekd verify`), the why next to each number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.errors import ConfigError, GateError
from edgekd.runtime.ort import make_session, predict
from edgekd.tolerances import TOLERANCES as ALL_TOLERANCES
from edgekd.tolerances import Tolerance, compare

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from edgekd.targets import TargetProfile


TOLERANCES = ALL_TOLERANCES["export"]  # edgekd.tolerances: PyTorch vs ONNX Runtime, per precision


@dataclass
class ParityResult:
    max_abs_diff: float
    top1_agreement: float
    samples: int
    atol: float
    min_top1_agreement: float
    precision: str
    passed: bool


def check_parity(
    model: "nn.Module",
    onnx_path: str | Path,
    x: np.ndarray,
    *,
    atol: float | None = None,
    min_top1_agreement: float | None = None,
    precision: str = "fp32",
    session_target: "TargetProfile | None" = None,
    batch_size: int = 32,
    raise_on_fail: bool = True,
) -> ParityResult:
    """Run `x` (N, C, H, W float32, real samples) through `model` and the ONNX file and compare logits.

    atol / min_top1_agreement default to `TOLERANCES[precision]`. With `raise_on_fail`
    (default) a violation raises GateError naming both numbers and both limits; with
    `raise_on_fail=False` the result is returned with `passed=False`, for reports.
    """
    tolerance = _tolerance(precision, atol, min_top1_agreement)
    x = _as_batch(x)
    reference = torch_logits(model, x, batch_size)
    session = make_session(onnx_path, target=session_target)
    logits = predict(session, x, batch_size)
    if logits.shape != reference.shape:
        raise GateError(
            f"ONNX output shape {logits.shape} differs from PyTorch's {reference.shape} for {Path(onnx_path).name}.",
            "Re-export the model; the ONNX file does not belong to this model.",
        )
    check = compare(logits, reference, tolerance)
    diff, agreement = check.max_abs_diff, check.top1_agreement
    result = ParityResult(diff, agreement, len(x), tolerance.atol, tolerance.min_top1, precision, check.passed)
    if raise_on_fail and not check.passed:
        raise GateError(
            f"ONNX parity ({precision}) failed for {Path(onnx_path).name} on {len(x)} samples: "
            f"max |logit difference| {diff:.3g} (tolerance {tolerance.atol:g}), "
            f"top-1 agreement {agreement:.2%} (minimum {tolerance.min_top1:.2%}).",
            "Re-export with the other exporter (`export.exporter`) or without simplification; "
            "if the difference is expected, loosen the parity tolerance (atol, min_top1_agreement).",
        )
    return result


def torch_logits(model: "nn.Module", x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Eval-mode float32 logits, without leaving the caller's model in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parts = [model(torch.from_numpy(x[i : i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(parts)


def _tolerance(precision: str, atol: float | None, min_top1: float | None) -> Tolerance:
    if precision not in TOLERANCES:
        raise ConfigError(f"Unknown precision {precision!r} for parity.", f"Use one of {', '.join(TOLERANCES)}.")
    base = TOLERANCES[precision]
    atol = base.atol if atol is None else float(atol)
    min_top1 = base.min_top1 if min_top1 is None else float(min_top1)
    if atol < 0 or not 0 <= min_top1 <= 1:
        raise ConfigError(
            f"Parity limits atol={atol}, min_top1_agreement={min_top1} are invalid.",
            "atol must be >= 0 and min_top1_agreement within [0, 1].",
        )
    return Tolerance(atol, min_top1, base.why if (atol, min_top1) == (base.atol, base.min_top1) else "caller")


def _as_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or len(x) == 0:
        raise ConfigError(f"Parity samples have shape {x.shape}.", "Pass real samples as (N, C, H, W), N >= 1.")
    return np.ascontiguousarray(x, dtype=np.float32)
