"""Quantization-aware students with NVIDIA Model Optimizer (workstation side: torch + modelopt).

    setup = prepare_qat(model, calib_x)                  fold BN, insert INT8 fake quantizers, calibrate
    ... train `model` as usual (same trainer, same distillation loss) ...
    result = export_qat_onnx(model, path, input_shape=..., opset=..., verify_with=val_x)

The quantizers follow TensorRT's explicit-quantization form (DESIGN.md): signed
int8, symmetric (no zero point), weights per output channel (axis 0),
activations per tensor. That is modelopt's `INT8_DEFAULT_CFG` with the "max"
calibrator; `check_quantizers` verifies it after insertion rather than trusting
the config format of one modelopt release. During training the calibrated
ranges (amax) stay fixed and gradients pass straight through inside them.

BatchNorm is folded into its convolution *before* the quantizers go in, so the
weight scales are those of the folded weights TensorRT will run; the model
stays trainable (the fused weight and bias are ordinary parameters).

modelopt exports Q/DQ through the TorchScript ONNX exporter's symbolic
functions (the dynamo exporter would trace the fake-quant arithmetic instead),
so the opset is 13..20. The export is post-processed into the form
`edgekd.onnxtools.trt_rules.check_qdq_for_tensorrt` accepts: each weight's
QuantizeLinear is folded into an int8 initializer (as ONNX Runtime's quantizer
writes them; 4x smaller too), and every consumer gets its own Q/DQ pair.

modelopt is the `[qat]` extra (pip install "edgekd[qat]"), imported on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.artifacts import sha256_file, sidecar_path, versions, write_json_atomic
from edgekd.errors import ConfigError, ModelError
from edgekd.rundir import scratch

log = logging.getLogger(__name__)

QAT_MIN_OPSET = 13  # QuantizeLinear's `axis` (per-channel) arrived in opset 13
QAT_MAX_OPSET = 20  # TorchScript exporter's cap; modelopt's Q/DQ symbolics live there
CALIB_BATCH = 64
# Fake-quantized PyTorch vs the QDQ file in ONNX Runtime. Both quantize to the same grid, so
# they differ only where float rounding moves a value across a rounding boundary (one step of
# that tensor's scale) and where ORT fuses DQ-Conv-Q into integer QLinearConv (int32 bias,
# requantized output). Measured on digits ResNet students after QAT (16 and 32 px, all 359
# validation samples): max |Δlogit| 0.17-0.51 with logits up to ~12, top-1 agreement 1.0.
# 1.5 keeps ~3x headroom and is 2x tighter than the float-vs-int8 tolerance (3.0), which also
# has to absorb the quantization error itself; top-1 0.98 instead of 0.90 for the same reason.
QAT_PARITY_ATOL = 1.5
QAT_PARITY_MIN_TOP1 = 0.98


@dataclass
class QatSetup:
    folded_batchnorms: int
    weight_quantizers: int
    activation_quantizers: int
    calibration_samples: int
    algorithm: str = "max"
    fold_max_abs_diff: float = 0.0


@dataclass
class QatExportResult:
    path: str
    sidecar: str
    opset: int
    exporter: str
    simplified: bool
    weights_folded: int  # weight QuantizeLinear nodes folded into int8 initializers
    pairs_dedicated: int  # Q/DQ copies made so no pair is shared between consumers
    qdq_nodes: int
    sha256: str
    parity: dict | None = None
    notes: list[str] = field(default_factory=list)


def import_mtq():
    """modelopt.torch.quantization, imported quietly on first use (the `[qat]` extra)."""
    torch_log = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" on CPU boxes
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script deprecation, transformers not installed
            import modelopt.torch.quantization as mtq
    except ImportError:
        raise ModelError(
            "Quantization-aware training needs NVIDIA Model Optimizer (nvidia-modelopt), which is not installed.",
            'pip install "edgekd[qat]" (or nvidia-modelopt), or set student.quantization: none.',
        ) from None
    finally:
        torch_log.setLevel(level)
    return mtq


def int8_config(mtq) -> dict:
    """modelopt's INT8 recipe for TensorRT: per-channel (axis 0) weights, per-tensor activations, max calibration."""
    import copy

    return copy.deepcopy(mtq.INT8_DEFAULT_CFG)


# ---------------------------------------------------------------------------
# Before training


def prepare_qat(model: nn.Module, calib_x: np.ndarray, *, batch_size: int = CALIB_BATCH, progress=None) -> QatSetup:
    """Fold BatchNorm, insert INT8 fake quantizers and calibrate them on `calib_x` (N, C, H, W), in place;
    `progress(n)` after each calibration batch.

    The model keeps its training mode afterwards and can be trained as before.
    """
    mtq = import_mtq()
    calib = torch.from_numpy(np.ascontiguousarray(calib_x, dtype=np.float32))
    if calib.ndim != 4 or len(calib) == 0:
        raise ModelError(f"Calibration samples have shape {tuple(calib.shape)}.", "Pass (N, C, H, W), N >= 1.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    folded, fold_diff = fold_batchnorm_trainable(model, calib[:batch_size].to(device))

    def forward_loop(m):
        with torch.no_grad():
            for start in range(0, len(calib), batch_size):
                m(calib[start : start + batch_size].to(device))
                if progress is not None:
                    progress(len(calib[start : start + batch_size]))

    with _quiet():
        mtq.quantize(model, int8_config(mtq), forward_loop)
    weights, activations = check_quantizers(model)
    model.train(was_training)
    return QatSetup(folded, weights, activations, len(calib), fold_max_abs_diff=fold_diff)


def fold_batchnorm_trainable(model: nn.Module, example: torch.Tensor) -> tuple[int, float]:
    """Fold every conv->BN pair into the conv (eval statistics), keeping the model trainable.

    Returns (pairs folded, max |Δlogit| on `example`). `fold_batchnorm` replaces the
    conv's weight/bias with new nn.Parameters, so an optimizer built afterwards trains them.
    """
    from edgekd.export.onnx_export import FOLD_RTOL, fold_batchnorm

    with torch.no_grad():
        before = model(example)
        count = fold_batchnorm(model, example)
        diff = float((model(example) - before).abs().max())
    limit = FOLD_RTOL * max(1.0, float(before.abs().max()))
    if diff > limit:
        raise ModelError(
            f"Folding BatchNorm before quantization changed the outputs by {diff:.3g} (limit {limit:.3g}).",
            "This model's conv/BN layout is not foldable by edgekd; use student.quantization: none and "
            "the post-training INT8 path (quantize:), and report the model.",
        )
    return count, diff


def quantizers(model: nn.Module) -> list[tuple[str, Any]]:
    """(name, TensorQuantizer) of every enabled quantizer."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled]


def check_quantizers(model: nn.Module) -> tuple[int, int]:
    """Every enabled quantizer in TensorRT's form; returns (weight, activation) counts."""
    found = quantizers(model)
    problems = [f"{name}: {p}" for name, q in found for p in _quantizer_problems(name, q)]
    if problems:
        raise ModelError(
            "modelopt inserted quantizers TensorRT cannot take: " + "; ".join(problems[:5]),
            "This modelopt release changed INT8_DEFAULT_CFG; pin the version in the [qat] extra and report it.",
        )
    weights = sum(name.endswith("weight_quantizer") for name, _ in found)
    if weights == 0:
        raise ModelError("modelopt quantized no weights in this model.",
                         "Only Conv/Linear layers are quantized; check the student architecture.")
    return weights, len(found) - weights


def _quantizer_problems(name: str, q) -> list[str]:
    problems = []
    if q.num_bits != 8 or q.unsigned:
        problems.append(f"{'u' if q.unsigned else ''}int{q.num_bits}, not signed int8")
    if q.amax is None:
        problems.append("not calibrated (no amax)")
    axis = q.axis[0] if isinstance(q.axis, (tuple, list)) and len(q.axis) == 1 else q.axis
    if name.endswith("weight_quantizer") and axis != 0:
        problems.append(f"weight scales on axis {q.axis}, not per output channel (0)")
    if name.endswith("input_quantizer") and axis is not None:
        problems.append(f"activation scales per axis {q.axis}, not per tensor")
    return problems


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")) as sink:
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            sink.close()


# ---------------------------------------------------------------------------
# After training: export


def qat_opset(requested: int | None, targets_max: int) -> tuple[int, str]:
    """(opset, why): the configured opset, else the strictest target's cap, at most QAT_MAX_OPSET."""
    if requested is not None:
        if not QAT_MIN_OPSET <= requested <= QAT_MAX_OPSET:
            raise ConfigError(f"A QAT student cannot be exported at opset {requested}.",
                              f"Use an opset in {QAT_MIN_OPSET}..{QAT_MAX_OPSET}.")
        return requested, "export.opset"
    if targets_max > QAT_MAX_OPSET:
        return QAT_MAX_OPSET, (f"targets accept {targets_max}; {QAT_MAX_OPSET} is the TorchScript exporter's "
                               "cap, which modelopt's Q/DQ export needs")
    return targets_max, "strictest target's max_opset"


def export_qat_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int, int],
    opset: int,
    metadata: dict[str, Any] | None = None,
    dynamic_batch: bool = True,
    simplify: bool = True,
    verify_with: np.ndarray | None = None,
    atol: float = QAT_PARITY_ATOL,
    min_top1_agreement: float = QAT_PARITY_MIN_TOP1,
    session_target=None,
    sidecar_extra: dict | None = None,
) -> QatExportResult:
    """Export a fake-quantized model to a TensorRT-ready QDQ ONNX at `path` (+ sidecar).

    verify_with: real samples (N, C, H, W); the file must match the fake-quantized PyTorch
    model within (atol, min_top1_agreement) in ONNX Runtime before it is published.
    Nothing reaches `path` unless the ONNX checker, ONNX Runtime, the TensorRT Q/DQ rules
    and parity all pass.
    """
    from edgekd.export.onnx_export import export_onnx
    from edgekd.export.parity import check_parity
    from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt
    from edgekd.quantize.ort_int8 import dedicate_dequantize, qdq_count
    from edgekd.runtime.ort import make_session

    if not QAT_MIN_OPSET <= opset <= QAT_MAX_OPSET:
        raise ConfigError(f"A QAT student cannot be exported at opset {opset}.",
                          f"Use an opset in {QAT_MIN_OPSET}..{QAT_MAX_OPSET}.")
    if not quantizers(model):
        raise ModelError("The model has no enabled quantizers.", "Call prepare_qat(model, calib_x) first.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**(metadata or {}), "edgekd.precision": "int8", "edgekd.quantization": "qat (nvidia-modelopt int8)"}
    was_training = model.training
    model.eval()
    try:
        with scratch(path.parent, "qat-") as tmp:  # edgekd.rundir
            with _quiet():
                raw = export_onnx(model, Path(tmp) / "raw.onnx", input_shape=input_shape, opset=opset,
                                  exporter="torchscript", dynamic_batch=dynamic_batch, simplify=simplify,
                                  metadata=meta, prepare=False)
            staged = Path(tmp) / "qat.onnx"
            folded = fold_weight_quantizers(raw.path, staged)
            dedicated = dedicate_dequantize(staged)
            _check_file(staged)
            make_session(staged, target=session_target)  # RuntimeBackendError if ONNX Runtime refuses it
            problems = check_qdq_for_tensorrt(staged)
            if problems:
                raise ModelError("The QAT model breaks TensorRT's explicit-quantization rules: " + "; ".join(problems[:5]),
                                 "This is an edgekd bug with this modelopt version; report it with the model.")
            parity = None
            if verify_with is not None:
                parity = asdict(check_parity(model, staged, verify_with, precision="int8", atol=atol,
                                             min_top1_agreement=min_top1_agreement, session_target=session_target))
            result = QatExportResult(path=str(path), sidecar=str(sidecar_path(path)), opset=opset,
                                     exporter=raw.exporter, simplified=raw.simplified, weights_folded=folded,
                                     pairs_dedicated=dedicated, qdq_nodes=qdq_count(staged),
                                     sha256=sha256_file(staged), parity=parity, notes=raw.warnings)
            os.replace(staged, path)
    finally:
        model.train(was_training)
    write_json_atomic(sidecar_path(path), {**asdict(result), "metadata": meta, "versions": versions(_VERSIONED),
                                           **(sidecar_extra or {})})
    return result


_VERSIONED = ("torch", "timm", "onnx", "onnxruntime", "onnxsim", "nvidia-modelopt", "numpy")


def _check_file(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"The QAT ONNX failed the ONNX checker: {str(exc).splitlines()[0]}",
                         "Try export.simplify: false, or report it with the model.") from None


def fold_weight_quantizers(source: str | Path, dest: str | Path) -> int:
    """Replace QuantizeLinear(float weight initializer) by an int8 initializer; returns how many.

    Computed exactly as the ONNX spec defines QuantizeLinear (x / scale, round half to even,
    + zero point, saturate to int8), so the graph computes the same values. The float weight
    is dropped when nothing else reads it.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(source))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consts = _constant_values(graph, inits)
    folded = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        if node.input[1] not in consts or len(node.input) < 3 or node.input[2] not in consts:
            continue
        weight = numpy_helper.to_array(inits[node.input[0]])
        q = _quantize(weight, consts[node.input[1]], consts[node.input[2]], _axis(node), weight.ndim)
        graph.initializer.append(numpy_helper.from_array(q, name=node.output[0]))  # DQ reads it by this name
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    _drop_unread_initializers(graph, {n.input[0] for n in folded})
    onnx.save_model(proto, str(dest))
    return len(folded)


def _quantize(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, rank: int) -> np.ndarray:
    if zero_point.dtype != np.int8:
        raise ModelError(f"A weight QuantizeLinear has a {zero_point.dtype} zero point.",
                         "Expected modelopt's signed int8 export; report the modelopt version.")
    shape = [1] * rank
    if scale.size > 1:
        shape[axis % rank] = scale.size
    scale = scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
    zp = zero_point.astype(np.int32).reshape(shape if zero_point.size > 1 else ())
    return np.clip(np.rint(weight.astype(np.float32) / scale) + zp, -128, 127).astype(np.int8)


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _constant_values(graph, inits: dict) -> dict:
    from onnx import numpy_helper

    values = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _drop_unread_initializers(graph, names: set[str]) -> None:
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name in names and t.name not in read]:
        graph.initializer.remove(init)


# ---------------------------------------------------------------------------
# Checkpoints


def qat_checkpoint_extra(model: nn.Module, setup: QatSetup) -> dict:
    """What `rebuild_qat_model` needs beyond arch/kwargs/state_dict: modelopt's own record of the quantizers."""
    import modelopt.torch.opt as mto

    from edgekd.artifacts import versions as package_versions

    return {"qat": {"modelopt_state": mto.modelopt_state(model), "setup": asdict(setup),
                    "modelopt": package_versions(("nvidia-modelopt",)).get("nvidia-modelopt")}}


def rebuild_qat_model(ckpt: dict) -> nn.Module:
    """The fake-quantized network of an edgekd QAT checkpoint, in eval mode.

    Rebuilds the float architecture, folds BatchNorm the same way (structure only; the
    values come from the state dict), restores modelopt's quantizers, loads the weights.
    """
    import_mtq()
    import modelopt.torch.opt as mto

    from edgekd.models.io import build

    model = build(ckpt["arch"], ckpt["arch_kwargs"]).eval()
    pre = ckpt["preprocess"]
    example = torch.zeros(1, pre["channels"], pre["input_size"], pre["input_size"])
    from edgekd.export.onnx_export import fold_batchnorm

    with torch.no_grad():
        fold_batchnorm(model, example)
    with _quiet():
        model = mto.restore_from_modelopt_state(model, ckpt["qat"]["modelopt_state"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
