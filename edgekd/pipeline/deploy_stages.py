"""Stages that turn checkpoints into shippable ONNX: export (+parity) and INT8."""

from __future__ import annotations

import shutil

from edgekd.errors import GateError
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import CALIB_FILE, CHECKPOINTS, VAL_FILE, Artifact
from edgekd.rundir import scratch_dir
from edgekd.targets import strictest_opset

MODELS = ("teacher", "student")
INT8_ONNX = "student.int8.onnx"  # ONNX Runtime's INT8 file (x86 kernels' form: U8 activations, S8 weights)


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


def _export_reads(ctx: RunContext) -> list[str]:
    # name: the ONNX metadata names the run; targets: the opset, parity's session, every sidecar's sessions
    return ["name", "export", "targets"]


def _export_outputs(ctx: RunContext) -> list[str]:
    return [f"{model}.onnx{suffix}" for model in MODELS for suffix in ("", ".json")]


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
        ckpt = read_checkpoint(ctx.run_dir / CHECKPOINTS[name])
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
    serves = ctx.targets_for("onnxruntime", "fp32")
    artifacts = [Artifact(f"{name}-fp32", name, "onnxruntime", "fp32", f"{name}.onnx", serves).to_dict() for name in MODELS]
    return {"outputs": outputs, "models": results, "artifacts": artifacts,
            "summary": f"opset {opset} via {s['exporter']}, student parity max|Δ| {s['parity']['max_abs_diff']:.2g}, "
                       f"top-1 agreement {s['parity']['top1_agreement']:.2%}"}


EXPORT = Stage("export", "fold BatchNorm, export ONNX, simplify, check parity", run_export, _export_reads,
               lambda ctx: [*CHECKPOINTS.values(), VAL_FILE], _export_outputs)

# ---------------------------------------------------------------- quantize


def max_int8_drop(ctx: RunContext, runtime: str = "onnxruntime") -> float:
    """The INT8 gate's bound (INT8 file vs the FP32 student, on val): `quantize.max_int8_drop`, else the
    strictest `budgets.max_int8_drop` of the targets the file serves (the first target's when none does).
    Not the budget's `max_accuracy_drop`, which bounds the student's drop vs the teacher."""
    configured = ctx.config.quantize.max_int8_drop
    if configured is not None:
        return configured
    served = [t for t in ctx.targets if t.runtime == runtime and "int8" in t.precisions] or [ctx.primary_target]
    return min(t.budgets.max_int8_drop for t in served)


def _quantize_reads(ctx: RunContext) -> list[str]:
    if not ctx.config.quantize.enabled:
        return ["quantize.enabled"]
    # targets: the gate's default bound and its sessions; the calibration samples arrive as data/calib.npz
    return [f"quantize.{key}" for key in ("enabled", "method", "per_channel", "max_int8_drop", "fallbacks")] + ["targets"]


def run_quantize(ctx: RunContext) -> dict:
    if not ctx.config.quantize.enabled:
        return {"outputs": [], "summary": "disabled in config"}
    from edgekd.quantize.gate import quantize_with_gate
    from edgekd.runtime.ort import accuracy, make_session, predict

    q = ctx.config.quantize
    val_x, val_y = ctx.val_arrays()  # the gate chooses: on val, never on the test split the report scores
    fp32 = ctx.run_dir / "student.onnx"
    reference = accuracy(predict(make_session(fp32, ctx.primary_target), val_x), val_y)
    bound = {"reference_val_accuracy": reference, "max_int8_drop": max_int8_drop(ctx)}
    try:
        gate = quantize_with_gate(fp32, ctx.run_dir / INT8_ONNX, ctx.calib_array(), val_x, val_y,
                                  reference_accuracy=reference, max_accuracy_drop=bound["max_int8_drop"],
                                  method=q.method, per_channel=q.per_channel, fallbacks=q.fallbacks,
                                  target=ctx.primary_target)
    except GateError as exc:  # no INT8 file; the run goes on so the report shows FP32 and every attempt
        ctx.ui.warn(f"INT8 gate failed: {exc.message.splitlines()[0]}")
        return {"outputs": [], **bound, "gate_passed": False, "attempts": exc.details or [],
                "failures": [failure("INT8 accuracy gate (quantize)", exc)],
                "summary": f"INT8 gate failed after {len(exc.details or [])} attempt(s): no INT8 student"}
    chosen = gate.chosen
    record_sessions(ctx, ctx.run_dir / INT8_ONNX)
    artifact = Artifact("student-int8", "student", "onnxruntime", "int8", INT8_ONNX, ctx.targets_for("onnxruntime", "int8"))
    return {"outputs": [INT8_ONNX, INT8_ONNX + ".json"], **bound, "gate_passed": True,
            "attempts": [vars(a) for a in gate.attempts], "artifacts": [artifact.to_dict()],
            "summary": f"{chosen.method}, per-channel {chosen.per_channel}: val accuracy {chosen.accuracy:.4f} "
                       f"(FP32 {reference:.4f}, {len(gate.attempts)} attempt(s))"}


def failure(check: str, exc: GateError) -> dict:
    """A failed quality gate as a stage result records it: the run finishes its report, then exits 5."""
    return {"check": check, "message": exc.message, "hint": exc.hint}


QUANTIZE = Stage("quantize", "ONNX Runtime static INT8 (QDQ) with an accuracy gate", run_quantize, _quantize_reads,
                 lambda ctx: ["student.onnx", CALIB_FILE, VAL_FILE] if ctx.config.quantize.enabled else [],
                 lambda ctx: [INT8_ONNX, INT8_ONNX + ".json"] if ctx.config.quantize.enabled else [])
