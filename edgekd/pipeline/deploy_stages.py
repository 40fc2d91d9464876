"""Stages that turn checkpoints into shippable ONNX: export (+parity) and INT8."""

from __future__ import annotations

import shutil

from edgekd.artifacts import STUDENT_CHECKPOINT, TEACHER_CHECKPOINT, checkpoint_file
from edgekd.config import config_dict
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
from edgekd.rundir import scratch_dir
from edgekd.targets import strictest_opset

MODELS = ("teacher", "student")


def record_sessions(ctx: RunContext, onnx_path) -> None:
    """Add each ONNX Runtime target's session options (threads, graph optimization) to the sidecar."""
    from edgekd.artifacts import read_sidecar, sidecar_path, write_json_atomic
    from edgekd.runtime.ort import session_settings

    sessions = {t.name: session_settings(t) for t in ctx.targets if t.runtime == "onnxruntime"}
    write_json_atomic(sidecar_path(onnx_path), {**read_sidecar(onnx_path), "onnxruntime_sessions": sessions})

# ---------------------------------------------------------------- export


def export_opset(ctx: RunContext) -> int:
    """The configured opset, else the strictest selected target's maximum."""
    return ctx.config.export.opset or strictest_opset(ctx.targets)


def _export_params(ctx: RunContext) -> dict:
    return {"export": config_dict(ctx.config.export), "opset": export_opset(ctx)}


def onnx_metadata(ctx: RunContext, checkpoint: dict) -> dict:
    """What a device needs to feed the model correctly, stored in the ONNX file itself."""
    pre = checkpoint["preprocess"]
    return {"preprocess": pre, "input_size": pre["input_size"], "mean": pre["mean"], "std": pre["std"],
            "interpolation": pre["interpolation"], "crop_pct": pre["crop_pct"], "classes": checkpoint["classes"],
            "model": checkpoint["arch"], "run": ctx.config.name}


def run_export(ctx: RunContext) -> dict:
    from edgekd.export.onnx_export import export_onnx
    from edgekd.export.parity import check_parity
    from edgekd.models.io import build, read_checkpoint

    cfg, opset = ctx.config.export, export_opset(ctx)
    val_x, _ = ctx.val_arrays()
    staging = scratch_dir(ctx.run_dir) / "export"  # a killed export leaves it where the next run removes it
    results, outputs = {}, []
    for name in MODELS:
        ckpt = read_checkpoint(ctx.run_dir / checkpoint_file(name))
        model = build(ckpt["arch"], ckpt["arch_kwargs"])
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        staged = staging / f"{name}.onnx"
        shape = (1, *val_x.shape[1:])
        exported = export_onnx(model, staged, input_shape=shape, opset=opset, exporter=cfg.exporter,
                               dynamic_batch=cfg.dynamic_batch, simplify=cfg.simplify,
                               metadata=onnx_metadata(ctx, ckpt))
        # Parity before publishing: a file that fails it never gets its final name.
        parity = check_parity(model, staged, val_x[: cfg.parity.samples], atol=cfg.parity.atol,
                              min_top1_agreement=cfg.parity.min_top1_agreement, session_target=ctx.primary_target)
        for suffix in ("", ".json"):
            shutil.move(f"{staged}{suffix}", ctx.run_dir / f"{name}.onnx{suffix}")
        record_sessions(ctx, ctx.run_dir / f"{name}.onnx")
        outputs += [f"{name}.onnx", f"{name}.onnx.json"]
        results[name] = {"exporter": exported.exporter, "exporter_reason": exported.exporter_reason,
                         "fallback_error": exported.fallback_error, "opset": exported.opset,
                         "simplified": exported.simplified, "simplify_note": exported.simplify_note,
                         "parity": {"max_abs_diff": parity.max_abs_diff, "top1_agreement": parity.top1_agreement,
                                    "samples": parity.samples, "atol": parity.atol,
                                    "min_top1_agreement": parity.min_top1_agreement}}
    shutil.rmtree(staging, ignore_errors=True)
    s = results["student"]
    return {"outputs": outputs, "models": results,
            "summary": f"opset {opset} via {s['exporter']}, student parity max|Δ| {s['parity']['max_abs_diff']:.2g}, "
                       f"top-1 agreement {s['parity']['top1_agreement']:.2%}"}


EXPORT = Stage("export", "fold BatchNorm, export ONNX, simplify, check parity", run_export, _export_params,
               lambda ctx: [TEACHER_CHECKPOINT, STUDENT_CHECKPOINT, "data/val.npz"])

# ---------------------------------------------------------------- quantize


def max_int8_drop(ctx: RunContext) -> float:
    configured = ctx.config.quantize.max_accuracy_drop
    return configured if configured is not None else ctx.primary_target.budgets.max_accuracy_drop


def _quantize_params(ctx: RunContext) -> dict:
    return {"quantize": config_dict(ctx.config.quantize), "max_drop": max_int8_drop(ctx),
            "target": ctx.primary_target.model_dump(mode="json")}


def run_quantize(ctx: RunContext) -> dict:
    if not ctx.config.quantize.enabled:
        return {"outputs": [], "summary": "disabled in config"}
    from edgekd.quantize.gate import quantize_with_gate
    from edgekd.runtime.ort import accuracy, make_session, predict

    q = ctx.config.quantize
    val_x, val_y = ctx.val_arrays()
    fp32 = ctx.run_dir / "student.onnx"
    reference = accuracy(predict(make_session(fp32, ctx.primary_target), val_x), val_y)
    gate = quantize_with_gate(fp32, ctx.run_dir / "student.int8.onnx", ctx.calib_array(), val_x, val_y,
                              reference_accuracy=reference, max_accuracy_drop=max_int8_drop(ctx), method=q.method,
                              per_channel=q.per_channel, fallbacks=q.fallbacks, target=ctx.primary_target)
    chosen = gate.chosen
    record_sessions(ctx, ctx.run_dir / "student.int8.onnx")
    return {"outputs": ["student.int8.onnx", "student.int8.onnx.json"], "reference_accuracy": reference,
            "max_accuracy_drop": max_int8_drop(ctx), "attempts": [vars(a) if hasattr(a, "__dict__") else a for a in gate.attempts],
            "summary": f"{chosen.method}, per-channel {chosen.per_channel}: accuracy {chosen.accuracy:.4f} "
                       f"(FP32 {reference:.4f}, {len(gate.attempts)} attempt(s))"}


QUANTIZE = Stage("quantize", "ONNX Runtime static INT8 (QDQ) with an accuracy gate", run_quantize, _quantize_params,
                 lambda ctx: ["student.onnx", "data/calib.npz", "data/val.npz"])
