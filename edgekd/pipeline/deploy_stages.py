"""Stages that turn checkpoints into shippable ONNX: export (+parity) and INT8."""

from __future__ import annotations

import shutil

from edgekd.errors import GateError
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import CHECKPOINTS, Artifact
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
    staging = scratch_dir(ctx.run_dir) / "export"  # a killed export leaves it where the next run removes it
    results, outputs = {}, []
    for name in MODELS:
        # stratified, from data/val.npz (the teacher's own view of it when the student has its own input)
        parity_x = ctx.parity_inputs(cfg.parity.samples, name)
        ckpt = read_checkpoint(ctx.run_dir / CHECKPOINTS[name])
        model = build(ckpt["arch"], ckpt["arch_kwargs"])
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        staged = staging / f"{name}.onnx"
        shape = (1, *parity_x.shape[1:])
        exported = export_onnx(model, staged, input_shape=shape, opset=opset, exporter=cfg.exporter,
                               dynamic_batch=cfg.dynamic_batch, simplify=cfg.simplify,
                               metadata=onnx_metadata(ctx, ckpt))
        # Parity before publishing: a file that fails it never gets its final name.
        parity = check_parity(model, staged, parity_x, atol=cfg.parity.atol,
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
               lambda ctx: [*CHECKPOINTS.values(), *dict.fromkeys(ctx.val_file(m) for m in MODELS)], _export_outputs)

# ---------------------------------------------------------------- quantize


def max_int8_drop(ctx: RunContext, targets: list) -> float:
    """The INT8 gate's bound for a file serving `targets` (INT8 file vs the FP32 student, on val):
    `quantize.max_int8_drop`, else the strictest `budgets.max_int8_drop` of those targets (the first
    target's when none). Not the budget's `max_accuracy_drop`, which bounds the student vs the teacher."""
    configured = ctx.config.quantize.max_int8_drop
    if configured is not None:
        return configured
    return min(t.budgets.max_int8_drop for t in (targets or [ctx.primary_target]))


def int8_file(scheme) -> str:
    """student.int8.x86.onnx, student.int8.arm64.onnx, student.int8.trt.onnx: which target it is for."""
    return f"student.int8.{scheme.key}.onnx"


def int8_artifact_name(scheme) -> str:
    """student-int8-x86, student-int8-arm64, student-int8-trt: the report row and `ship --artifact` name."""
    return f"student-int8-{scheme.key}"


def ort_int8_plan(ctx: RunContext) -> list[tuple]:
    """(scheme, targets) per INT8 file for the ONNX Runtime targets that take int8 (edgekd.quantize.schemes)."""
    from edgekd.quantize.schemes import plan_schemes

    if not ctx.config.quantize.enabled:
        return []
    return [(scheme, targets) for scheme, targets in plan_schemes(ctx.targets) if scheme.runtime == "onnxruntime"]


def calib_source(ctx: RunContext):
    """data/calib.npz's samples (the searched input size's: ctx.calib_file), memory-mapped: calibration reads one
    batch at a time."""
    from edgekd.quantize.ort_int8 import npz_array

    return npz_array(ctx.run_dir / ctx.calib_file(), "x")


def _quantize_reads(ctx: RunContext) -> list[str]:
    if not ctx.config.quantize.enabled:
        return ["quantize.enabled"]
    # targets: which files (one per INT8 scheme), their bounds and sessions; the samples arrive as data/calib.npz
    return ([f"quantize.{key}" for key in ("enabled", "method", "per_channel", "max_int8_drop", "fallbacks")]
            + ["targets"] + ([] if ctx.config.data.real_choices else ["data.kind", "data.use"]))  # agreement gate


def _quantize_facts(ctx: RunContext) -> dict:
    # what this host decides beyond the config: an x86 file's 7-bit weights on a CPU without VNNI
    return {"schemes": [scheme.as_dict() for scheme, _ in ort_int8_plan(ctx)]}


def _quantize_outputs(ctx: RunContext) -> list[str]:
    return [name for scheme, _ in ort_int8_plan(ctx) for name in (int8_file(scheme), int8_file(scheme) + ".json")]


def run_quantize(ctx: RunContext) -> dict:
    if not ctx.config.quantize.enabled:
        return {"outputs": [], "summary": "disabled in config"}
    plan = ort_int8_plan(ctx)
    if not plan:
        return {"outputs": [], "files": [], "summary": "no ONNX Runtime target takes int8"}
    from edgekd.runtime.ort import accuracy, make_session, predict

    val_x, val_y = ctx.val_arrays()  # the gate chooses: on val, never on the test split the report scores
    fp32 = predict(make_session(ctx.run_dir / "student.onnx", ctx.primary_target), val_x)
    if not ctx.config.data.real_choices:  # no real labels: INT8 must agree with the FP32 student on held-out images
        val_y = fp32.argmax(1)
    reference = accuracy(fp32, val_y)
    files = [_quantize_for(ctx, scheme, targets, reference, val_x, val_y) for scheme, targets in plan]
    made = [f for f in files if f["gate_passed"]]
    artifacts = [Artifact(f["artifact"], "student", "onnxruntime", "int8", f["file"], tuple(f["targets"])).to_dict()
                 for f in made]
    return {"outputs": [name for f in made for name in (f["file"], f["file"] + ".json")],
            "reference_val_accuracy": reference, **gate_measure(ctx, len(val_y)), "files": files,
            "artifacts": artifacts,
            "failures": [f.pop("failure") for f in files if "failure" in f],
            "summary": "; ".join(_file_summary(f, reference) for f in files)}


AGREEMENT_GATE = "agreement with the FP32 student"


def gate_measure(ctx: RunContext, samples: int) -> dict:
    """What the INT8 gate's scores are: val accuracy, or without real labels (data.kind: synthetic) top-1
    agreement with the FP32 student's own outputs on the held-out synthetic images (its reference is 1)."""
    if ctx.config.data.real_choices:
        return {"gate_measure": "val accuracy"}
    why = "no real labelled data" if not ctx.config.data.real else "data.use: report"
    return {"gate_measure": f"{AGREEMENT_GATE} on {samples} held-out synthetic images ({why})"}


def _quantize_for(ctx: RunContext, scheme, targets: list, reference: float, val_x, val_y) -> dict:
    """One INT8 file through the gate: accuracy within the targets' bound first, then the fastest.
    A failed gate leaves no file; the record keeps every attempt and the run goes on to its report."""
    from dataclasses import asdict

    from edgekd.quantize.gate import quantize_with_gate

    q, name, bound = ctx.config.quantize, int8_file(scheme), max_int8_drop(ctx, targets)
    record = {"file": name, "artifact": int8_artifact_name(scheme), "targets": [t.name for t in targets],
              "scheme": scheme.as_dict(), "max_int8_drop": bound}
    try:
        gate = quantize_with_gate(ctx.run_dir / "student.onnx", ctx.run_dir / name, calib_source(ctx), val_x, val_y,
                                  reference_accuracy=reference, max_accuracy_drop=bound, method=q.method,
                                  per_channel=q.per_channel, fallbacks=q.fallbacks, target=targets[0], scheme=scheme,
                                  ui=ctx.ui)
    except GateError as exc:
        ctx.ui.warn(f"INT8 gate failed for {name}: {exc.message.splitlines()[0]}")
        return {**record, "gate_passed": False, "attempts": exc.details or [], "speed": {},
                "failure": failure(f"INT8 accuracy gate (quantize, {name})", exc)}
    record_sessions(ctx, ctx.run_dir / name)
    return {**record, "scheme": gate.scheme, "gate_passed": True, "val_accuracy": gate.chosen.accuracy,
            "attempts": [asdict(a) for a in gate.attempts], "chosen": gate.attempts.index(gate.chosen),
            "speed": gate.speed}


def _file_summary(f: dict, reference: float) -> str:
    head = f"{f['file']} {f['scheme']['types']} for {', '.join(f['targets'])}"
    if not f["gate_passed"]:
        return f"{head}: INT8 gate failed after {len(f['attempts'])} attempt(s), no file"
    return (f"{head}: val accuracy {f['val_accuracy']:.4f} (FP32 {reference:.4f}), "
            f"{f['speed'].get('verdict', 'not timed here')}")


def failure(check: str, exc: GateError) -> dict:
    """A failed quality gate as a stage result records it: the run finishes its report, then exits 5."""
    return {"check": check, "message": exc.message, "hint": exc.hint}


QUANTIZE = Stage("quantize", "ONNX Runtime static INT8 per target scheme, accuracy gate then fastest", run_quantize,
                 _quantize_reads,
                 lambda ctx: ["student.onnx", ctx.calib_file(), ctx.val_file()] if ctx.config.quantize.enabled else [],
                 _quantize_outputs, facts=_quantize_facts)
