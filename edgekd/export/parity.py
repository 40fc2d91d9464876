"""Does the ONNX file compute what the PyTorch model computes? (PyTorch vs ONNX Runtime)

Compared on real validation samples, on the logits: the largest absolute
difference and how often the top-1 class agrees. The default tolerances depend
on what the ONNX file holds (`TOLERANCES`); the why is next to each number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.errors import ConfigError, GateError
from edgekd.runtime.ort import make_session, predict

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from edgekd.targets import TargetProfile


@dataclass(frozen=True)
class Tolerance:
    atol: float  # max |logit_torch - logit_onnx| over all samples and classes
    min_top1_agreement: float  # fraction of samples whose argmax agrees
    why: str


TOLERANCES: dict[str, Tolerance] = {
    # Same arithmetic, different kernels: ONNX Runtime's MLAS sums in another order and fuses
    # LayerNorm/GELU, so logits differ by float32 rounding only (measured here: <= 1.5e-6 on
    # tiny ResNet / MobileNetV3 / EfficientNet / ConvNeXt / ViT). 1e-4 leaves ~60x headroom and
    # still catches real bugs (a baked-in branch or wrong layout moves logits by >= 1e-2).
    # Top-1 may flip only on near-ties, hence 0.99 rather than 1.0.
    "fp32": Tolerance(1e-4, 0.99, "float32 rounding from different kernels and summation order"),
    # float16 keeps 11 significant bits (~1e-3 relative per op) and the error grows with depth:
    # the 3-conv digits CNN moved by 0.016 with logits up to 8.4 (torch CPU half); 0.15 leaves
    # room for 20-50 layer students. Near-tie flips are more frequent than in fp32.
    "fp16": Tolerance(0.15, 0.98, "11-bit mantissa, ~1e-3 relative per op, accumulated over depth"),
    # int8 fake-quant (QDQ) vs float: 256 levels per tensor, i.e. a step of ~0.4-0.8% of each
    # tensor's range. Measured on the digits CNN (logits up to 8.4): max diff 0.9-1.7, top-1
    # agreement 0.97-0.997 across minmax/entropy/percentile. This is a sanity bound that catches
    # a broken graph (wrong scales, layout: agreement near chance); the accuracy gate
    # (edgekd.quantize.gate) judges the real cost on labelled data.
    "int8": Tolerance(3.0, 0.90, "256 levels per tensor; the accuracy gate judges the real loss"),
}


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
    diff = float(np.abs(logits - reference).max())
    agreement = float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean())
    passed = diff <= tolerance.atol and agreement >= tolerance.min_top1_agreement
    result = ParityResult(diff, agreement, len(x), tolerance.atol, tolerance.min_top1_agreement, precision, passed)
    if raise_on_fail and not passed:
        raise GateError(
            f"ONNX parity ({precision}) failed for {Path(onnx_path).name} on {len(x)} samples: "
            f"max |logit difference| {diff:.3g} (tolerance {tolerance.atol:g}), "
            f"top-1 agreement {agreement:.2%} (minimum {tolerance.min_top1_agreement:.2%}).",
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
    min_top1 = base.min_top1_agreement if min_top1 is None else float(min_top1)
    if atol < 0 or not 0 <= min_top1 <= 1:
        raise ConfigError(
            f"Parity limits atol={atol}, min_top1_agreement={min_top1} are invalid.",
            "atol must be >= 0 and min_top1_agreement within [0, 1].",
        )
    return Tolerance(atol, min_top1, base.why if (atol, min_top1) == (base.atol, base.min_top1_agreement) else "caller")


def _as_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or len(x) == 0:
        raise ConfigError(f"Parity samples have shape {x.shape}.", "Pass real samples as (N, C, H, W), N >= 1.")
    return np.ascontiguousarray(x, dtype=np.float32)
