"""Stages that turn checkpoints into shippable ONNX: export (+parity) and INT8."""

from __future__ import annotations

import shutil

from edgekd.config import config_dict
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
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
    staging = ctx.run_dir / "staging"
    results, outputs = {}, []
    for name in MODELS:
        ckpt = read_checkpoint(ctx.run_dir / f"{name}.pt")
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
               lambda ctx: ["teacher.pt", "student.pt", "data/val.npz"])

# ---------------------------------------------------------------- quantize


def int8_bound(ctx: RunContext, targets: list) -> float:
    """The INT8 gate's allowed accuracy drop vs the FP32 student for a file serving `targets`:
    quantize.max_accuracy_drop, else the strictest of their budgets."""
    configured = ctx.config.quantize.max_accuracy_drop
    return configured if configured is not None else min(t.budgets.max_accuracy_drop for t in targets)


def int8_file(scheme) -> str:
    """student.int8.x86.onnx, student.int8.arm64.onnx, student.int8.trt.onnx: which target it is for."""
    return f"student.int8.{scheme.key}.onnx"


def ort_int8_plan(ctx: RunContext) -> list[tuple]:
    """(scheme, targets) per INT8 file for the ONNX Runtime targets that take int8 (edgekd.quantize.schemes)."""
    from edgekd.quantize.schemes import plan_schemes

    return [(scheme, targets) for scheme, targets in plan_schemes(ctx.targets) if scheme.runtime == "onnxruntime"]


def calib_source(ctx: RunContext):
    """data/calib.npz's samples, memory-mapped: calibration reads one batch at a time."""
    from edgekd.quantize.ort_int8 import npz_array

    return npz_array(ctx.run_dir / "data" / "calib.npz", "x")


def _quantize_params(ctx: RunContext) -> dict:
    # the schemes carry what the host decides (7-bit weights on x86 CPUs without VNNI)
    return {"quantize": config_dict(ctx.config.quantize),
            "files": [{"file": int8_file(scheme), "scheme": scheme.as_dict(), "bound": int8_bound(ctx, targets),
                       "targets": [t.model_dump(mode="json") for t in targets]} for scheme, targets in ort_int8_plan(ctx)]}


def run_quantize(ctx: RunContext) -> dict:
    if not ctx.config.quantize.enabled:
        return {"outputs": [], "summary": "disabled in config"}
    plan = ort_int8_plan(ctx)
    if not plan:
        return {"outputs": [], "files": [], "summary": "no ONNX Runtime target takes int8"}
    from edgekd.runtime.ort import accuracy, make_session, predict

    val_x, val_y = ctx.val_arrays()
    fp32 = ctx.run_dir / "student.onnx"
    reference = accuracy(predict(make_session(fp32, ctx.primary_target), val_x), val_y)
    files = [_quantize_for(ctx, scheme, targets, reference, val_x, val_y) for scheme, targets in plan]
    outputs = [name for f in files for name in (f["file"], f["file"] + ".json")]
    return {"outputs": outputs, "reference_accuracy": reference, "files": files,
            "summary": "; ".join(f"{f['file']} {f['scheme']['types']} for {', '.join(f['targets'])}: accuracy "
                                 f"{f['accuracy']:.4f} (FP32 {reference:.4f}), {f['speed'].get('verdict', 'not timed here')}"
                                 for f in files)}


def _quantize_for(ctx: RunContext, scheme, targets: list, reference: float, val_x, val_y) -> dict:
    """One INT8 file through the gate: accuracy within the targets' bound first, then the fastest."""
    from dataclasses import asdict

    from edgekd.quantize.gate import quantize_with_gate

    q, name, bound = ctx.config.quantize, int8_file(scheme), int8_bound(ctx, targets)
    gate = quantize_with_gate(ctx.run_dir / "student.onnx", ctx.run_dir / name, calib_source(ctx), val_x, val_y,
                              reference_accuracy=reference, max_accuracy_drop=bound, method=q.method,
                              per_channel=q.per_channel, fallbacks=q.fallbacks, target=targets[0], scheme=scheme)
    record_sessions(ctx, ctx.run_dir / name)
    return {"file": name, "targets": [t.name for t in targets], "scheme": gate.scheme, "max_accuracy_drop": bound,
            "accuracy": gate.chosen.accuracy, "attempts": [asdict(a) for a in gate.attempts],
            "chosen": gate.attempts.index(gate.chosen), "speed": gate.speed}


QUANTIZE = Stage("quantize", "ONNX Runtime static INT8 per target scheme, accuracy gate then fastest", run_quantize,
                 _quantize_params, lambda ctx: ["student.onnx", "data/calib.npz", "data/val.npz"])
