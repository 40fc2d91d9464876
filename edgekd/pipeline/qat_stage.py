"""Quantization-aware distillation (`student: {quantization: qat}`): student.safetensors -> student.qat.onnx.

Starts from the distilled float student (QAT fine-tunes a trained network; from
random weights the frozen ranges would be meaningless), folds BatchNorm, inserts
modelopt's INT8 fake quantizers, calibrates them on the calibration split (the
same samples post-training INT8 uses, so the two compare fairly; a seeded
sample of the training set when `quantize.enabled` is false), distils further
with the same trainer, loss and teacher (`distill.qat`), and exports a
TensorRT-ready QDQ ONNX checked for parity against the fake-quantized model.
"""

from __future__ import annotations

import numpy as np
import torch

from edgekd.artifacts import QAT_CHECKPOINT
from edgekd.config import config_dict
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import CALIB_FILE, STUDENT_CHECKPOINT, SUMMARY_FILE, VAL_FILE, Artifact

QAT_ONNX = "student.qat.onnx"
QAT_FILES = [QAT_CHECKPOINT, QAT_ONNX, QAT_ONNX + ".json"]
FALLBACK_CALIB_SAMPLES = 512


def qat_enabled(ctx: RunContext) -> bool:
    return ctx.config.student.quantization == "qat"


def qat_opset(ctx: RunContext) -> tuple[int, str]:
    """(opset, why): export.opset, else the strictest target's cap, at most 20 (modelopt's exporter)."""
    from edgekd.quantize.qat import qat_opset as choose
    from edgekd.targets import strictest_opset

    return choose(ctx.config.export.opset, strictest_opset(ctx.targets))


def _reads(ctx: RunContext) -> list[str]:
    c = ctx.config
    if not qat_enabled(ctx):
        return ["student.quantization"]
    reads = ["name", "seed", "device", *c.data.augment_keys, "data.seed", "data.train_fraction", "student.quantization",
             "distill.qat", "distill.losses", "distill.unlabeled_fraction", "distill.teacher_cache",
             "export.opset", "export.dynamic_batch", "export.simplify", "export.parity.samples", "targets",
             "quantize.enabled"]  # calibration: data/calib.npz when quantize is on, else training samples
    if c.teachers:
        reads.append("teachers[*].weight")
    return reads


def _inputs(ctx: RunContext) -> list[str]:
    if not qat_enabled(ctx):
        return []
    from edgekd.pipeline.train_stages import teacher_files

    return [SUMMARY_FILE, VAL_FILE, *teacher_files(ctx.config), STUDENT_CHECKPOINT] + (
        [CALIB_FILE] if ctx.config.quantize.enabled else [])


def calibration_samples(ctx: RunContext) -> tuple[np.ndarray, str]:
    if ctx.config.quantize.enabled:
        return ctx.calib_array(), "data/calib.npz (the post-training INT8 calibration set)"
    train = ctx.data.train
    idx = np.random.default_rng(ctx.config.seed).permutation(len(train))[:FALLBACK_CALIB_SAMPLES]
    return train.stack(np.sort(idx)), f"{len(idx)} training samples (seed {ctx.config.seed}; quantize is disabled)"


def run_qat(ctx: RunContext) -> dict:
    if not qat_enabled(ctx):
        return {"outputs": [], "summary": "not requested (student.quantization: none)"}
    from edgekd.distill.losses import build_objective
    from edgekd.models.io import load_model, read_checkpoint
    from edgekd.pipeline.train_stages import (_fit, _load_teacher, _student_split, _teacher_source, _train_metrics,
                                              _val_accuracy, student_train_xy, teacher_files)
    from edgekd.quantize.qat import prepare_qat

    c = ctx.config
    ckpt = read_checkpoint(ctx.run_dir / STUDENT_CHECKPOINT)
    student = load_model(ctx.run_dir / STUDENT_CHECKPOINT).to(ctx.device)
    calib_x, calib_note = calibration_samples(ctx)
    with ctx.ui.progress("calibrating the INT8 fake quantizers", len(calib_x), unit="images") as advance:
        setup = prepare_qat(student, calib_x, progress=advance)
    calibrated_accuracy = _val_accuracy(ctx, student)  # fake-quantized, before any QAT step: PTQ-like
    torch.manual_seed(c.seed)
    teacher = _load_teacher(ctx)  # teacher.safetensors, or the weighted ensemble of `teachers:`
    loss = build_objective(c.distill.losses, student=student, teacher=teacher,
                           input_shape=ctx.data.input_shape, label_smoothing=c.distill.qat.label_smoothing)
    loss.hold_progress(1.0)  # QAT continues the distillation: scheduled kd terms keep their end values
    split = _student_split(ctx)  # the distillation's samples and withheld labels
    teacher_fn, cache_note = _teacher_source(ctx, teacher, loss, teacher_files(c), rows=split.rows)
    try:
        result = _fit(ctx, student, "student-qat", c.distill.qat, loss, teacher=teacher_fn,
                      train_xy=student_train_xy(ctx, split))
    finally:
        loss.close()  # hooks off before export
    student.load_state_dict(result.best_state)
    if not ctx.dist.is_main:  # torchrun: the other ranks only train
        return {"outputs": []}
    accuracy = _val_accuracy(ctx, student)
    metrics = {"val_accuracy": accuracy, "calibrated_accuracy": calibrated_accuracy, "calibration": calib_note,
               "float_accuracy": ckpt["metrics"]["val_accuracy"], "setup": vars(setup), "teacher_cache": cache_note,
               **_train_metrics(result)}
    _save_qat(ctx, student, ckpt, setup, metrics)
    exported = _export(ctx, student, ckpt)
    serves = ctx.targets_for("onnxruntime", "int8") + ctx.targets_for("tensorrt", "int8")
    artifact = Artifact("student-qat-int8", "student", "onnxruntime", "int8", QAT_ONNX, serves)
    return {"outputs": QAT_FILES, **metrics, "export": exported, "artifacts": [artifact.to_dict()],
            "summary": f"fake-quant val accuracy {accuracy:.4f} after {result.epochs_run} QAT epoch(s) "
                       f"(calibrated only {calibrated_accuracy:.4f}, float {metrics['float_accuracy']:.4f}); "
                       f"ONNX parity max|Δ| {exported['parity']['max_abs_diff']:.2g}"}


def _save_qat(ctx: RunContext, student, float_ckpt: dict, setup, metrics: dict) -> None:
    """student.qat.safetensors: the float student's record plus modelopt's quantizer state (load_model rebuilds it)."""
    from edgekd.models.io import save_checkpoint
    from edgekd.quantize.qat import qat_checkpoint_extra

    c = ctx.config
    save_checkpoint(ctx.run_dir / QAT_CHECKPOINT, student.cpu(), float_ckpt["arch"], float_ckpt["arch_kwargs"],
                    preprocess=float_ckpt["preprocess"], classes=float_ckpt["classes"],
                    config={"student": config_dict(c.student), "distill": config_dict(c.distill)}, metrics=metrics,
                    **qat_checkpoint_extra(student, setup))


def _export(ctx: RunContext, student, ckpt: dict) -> dict:
    from dataclasses import asdict

    from edgekd.pipeline.deploy_stages import onnx_metadata
    from edgekd.quantize.qat import export_qat_onnx

    cfg = ctx.config.export
    opset, why = qat_opset(ctx)
    parity_x = ctx.parity_inputs(cfg.parity.samples)  # stratified, from data/val.npz
    result = export_qat_onnx(student.cpu().eval(), ctx.run_dir / QAT_ONNX, input_shape=(1, *parity_x.shape[1:]),
                             opset=opset, metadata=onnx_metadata(ctx, ckpt), dynamic_batch=cfg.dynamic_batch,
                             simplify=cfg.simplify, verify_with=parity_x,
                             session_target=ctx.primary_target, sidecar_extra={"opset_reason": why})
    return {**asdict(result), "opset_reason": why}


QAT = Stage("qat", "quantization-aware distillation (modelopt INT8) and QDQ export", run_qat, _reads, _inputs,
            lambda ctx: QAT_FILES if qat_enabled(ctx) else [], distributed=True)
