"""Stages that need torch: data, teacher, student (distillation)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from edgekd.artifacts import sha256_file
from edgekd.config import FEATURE_LOSS_KINDS, config_dict
from edgekd.data import StudentSplit, student_split
from edgekd.data.calib import load_manifest, select
from edgekd.distill.losses import DistillObjective, build_objective, cross_entropy
from edgekd.distill.trainer import TrainResult, predict_logits, train
from edgekd.models.io import build, load_model, read_checkpoint, save_checkpoint
from edgekd.models.prune import init_from_teacher
from edgekd.models.student import student_spec
from edgekd.models.teacher import build_teacher
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage

# ---------------------------------------------------------------- data


def _data_params(ctx: RunContext) -> dict:
    manifest = ctx.config.quantize.calibration
    return {"data": config_dict(ctx.config.data), "teacher_model": ctx.config.teacher.model,
            "calibration": config_dict(load_manifest(manifest)) if ctx.config.quantize.enabled else None}


def run_data(ctx: RunContext) -> dict:
    data = ctx.data
    out = ctx.run_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "val.npz", x=data.val_x, y=data.val_y, classes=np.array(data.classes))
    outputs = ["data/val.npz", "data/summary.json"]
    summary = {**data.summary(), "fingerprint": data.fingerprint()}
    if ctx.config.quantize.enabled:
        manifest = load_manifest(ctx.config.quantize.calibration)
        pool_x, pool_y = (data.train_x, data.train_y) if manifest.split == "train" else (data.val_x, data.val_y)
        idx = select(pool_y, manifest)
        np.savez(out / "calib.npz", x=pool_x[idx], y=pool_y[idx], indices=idx)
        summary["calibration"] = {"manifest": str(ctx.config.quantize.calibration), "split": manifest.split,
                                  "samples": int(len(idx)), "seed": manifest.seed}
        outputs.append("data/calib.npz")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"outputs": outputs, "summary": f"{len(data.train_y)} train / {len(data.val_y)} val images, "
            f"{data.num_classes} classes", "dataset": data.summary()}


DATA = Stage("data", "load, split and preprocess the dataset", run_data, _data_params, lambda ctx: [])

# ---------------------------------------------------------------- teacher


def _teacher_params(ctx: RunContext) -> dict:
    params = {"teacher": config_dict(ctx.config.teacher), "seed": ctx.config.seed}
    if ctx.config.distill.unlabeled_fraction > 0:  # the teacher trains without the withheld labels
        d = ctx.config.data
        params["labels_withheld"] = {"train_fraction": d.train_fraction, "seed": d.seed,
                                     "unlabeled_fraction": ctx.config.distill.unlabeled_fraction}
    return params


def _teacher_inputs(ctx: RunContext) -> list[str]:
    # An absolute path joins to itself under run_dir: the key follows the checkpoint's content.
    checkpoint = ctx.config.teacher.checkpoint
    return ["data/summary.json"] + ([str(checkpoint)] if checkpoint else [])


def run_teacher(ctx: RunContext) -> dict:
    cfg, data = ctx.config.teacher, ctx.data
    init = build_teacher(cfg, data.num_classes, data.preprocess.channels)
    should_train = cfg.finetune if cfg.finetune is not None else init.needs_training
    result = None
    if should_train and cfg.train.epochs > 0:
        torch.manual_seed(ctx.config.seed)
        result = _fit(ctx, init.model, "teacher", cfg.train, cross_entropy(cfg.train.label_smoothing), teacher=None,
                      train_xy=_teacher_train_xy(ctx))
        init.model.load_state_dict(result.best_state)
    accuracy = _val_accuracy(ctx, init.model)
    metrics = {"val_accuracy": accuracy, "source": init.source, "trained": result is not None,
               **(_train_metrics(result) if result else {})}
    _save(ctx, "teacher.pt", init.model, init.arch, init.arch_kwargs, {"teacher": config_dict(cfg)}, metrics)
    how = f"trained {result.epochs_run} epochs" if result else f"loaded from {init.source}"
    return {"outputs": ["teacher.pt"], "summary": f"{init.arch} {how}, val accuracy {accuracy:.4f}", **metrics}


def _teacher_train_xy(ctx: RunContext):
    """All of the training split except the samples the student stage uses without labels:
    those labels are withheld from every stage (`distill.unlabeled_fraction`)."""
    if ctx.config.distill.unlabeled_fraction == 0:
        return None
    data = ctx.data
    keep = np.setdiff1d(np.arange(len(data.train_y)), _student_split(ctx).unlabeled_rows)
    return torch.from_numpy(data.train_x[keep]), torch.from_numpy(data.train_y[keep])


TEACHER = Stage("teacher", "build and train the teacher", run_teacher, _teacher_params, _teacher_inputs,
                distributed=True)

# ---------------------------------------------------------------- student


def _student_params(ctx: RunContext) -> dict:
    c = ctx.config
    return {"student": config_dict(c.student), "distill": config_dict(c.distill), "seed": c.seed,
            "augment": c.data.augment, "train_fraction": c.data.train_fraction}


def _student_split(ctx: RunContext) -> StudentSplit:
    c = ctx.config
    return student_split(ctx.data.train_y, c.data.train_fraction, c.distill.unlabeled_fraction, c.data.seed)


def student_train_xy(ctx: RunContext, split: StudentSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's training tensors: `data.train_fraction` of the split, withheld labels set to -1."""
    data = ctx.data
    y = data.train_y[split.rows].copy()
    y[split.unlabeled] = -1
    return torch.from_numpy(data.train_x[split.rows]), torch.from_numpy(y)


def run_student(ctx: RunContext) -> dict:
    c, data = ctx.config, ctx.data
    teacher = load_model(ctx.run_dir / "teacher.pt").to(ctx.device)
    teacher_ckpt = read_checkpoint(ctx.run_dir / "teacher.pt")
    arch, kwargs = student_spec(c.student, teacher_ckpt["arch"], teacher_ckpt["arch_kwargs"])
    torch.manual_seed(c.seed)
    student = build(arch, kwargs)
    init = _init_student(ctx, student, teacher)
    pre = data.preprocess
    objective = build_objective(c.distill.losses, student=student, teacher=teacher,
                                input_shape=(pre.channels, pre.input_size, pre.input_size),
                                label_smoothing=c.distill.train.label_smoothing)
    split = _student_split(ctx)
    teacher_fn, cache_note = _teacher_source(ctx, teacher, objective, split.rows)
    try:
        result = _fit(ctx, student, "student", c.distill.train, objective, teacher=teacher_fn,
                      train_xy=student_train_xy(ctx, split))
    finally:
        objective.close()  # hooks off: the saved and exported student is the plain timm model
    student.load_state_dict(result.best_state)
    accuracy = _val_accuracy(ctx, student)
    params = sum(p.numel() for p in student.parameters())
    metrics = {"val_accuracy": accuracy, "params": params, "teacher_cache": cache_note, **init,
               "losses": objective.describe(), "loss_params": sum(p.numel() for p in objective.parameters()),
               "student_data": split.summary(), **_train_metrics(result)}
    _save(ctx, "student.pt", student, arch, kwargs, {"student": config_dict(c.student), "distill": config_dict(c.distill)}, metrics)
    return {"outputs": ["student.pt"], "arch": arch, "arch_kwargs": kwargs,
            "summary": f"{arch} {params / 1e3:.0f}K params ({init['init']}), val accuracy {accuracy:.4f}", **metrics}


STUDENT = Stage("student", "distil the student from the teacher", run_student, _student_params,
                lambda ctx: ["data/summary.json", "teacher.pt"], distributed=True)

CALIBRATION_IMAGES = 512  # BatchNorm re-estimation after pruning: a few batches suffice


def _init_student(ctx: RunContext, student: torch.nn.Module, teacher: torch.nn.Module) -> dict:
    """Random init, or the teacher pruned into the student (its accuracy before training is recorded)."""
    if ctx.config.student.init != "teacher":
        return {"init": "random"}
    student.to(ctx.device)
    calibration = torch.from_numpy(ctx.data.train_x[:CALIBRATION_IMAGES])
    family = init_from_teacher(student, teacher, calibration=calibration)
    accuracy = _val_accuracy(ctx, student)
    ctx.ui.info(f"student initialised from the pruned teacher ({family}): val accuracy {accuracy:.4f} before training")
    return {"init": f"teacher ({family}: pruned, BatchNorm recalibrated)", "init_val_accuracy": accuracy}


def _teacher_source(ctx: RunContext, teacher: torch.nn.Module, objective: DistillObjective,
                    rows: np.ndarray | None = None):
    """No teacher when every loss is teacher-free (ce, tfkd); cached teacher logits when
    inputs repeat exactly every epoch and every loss reads logits only; else the live
    teacher (its hooks record what feature losses read).

    rows: the training-split indices the student trains on (`data.train_fraction`); the
    trainer's batch indices point into them, the cache covers the whole split.

    Under torchrun the cache is computed sharded: each rank runs the teacher on its
    stride of the training set, the strides are gathered, rank 0 writes the file, and
    every rank reads it back (each indexes it with its own shard's indices).
    """
    teacher.eval()
    if not objective.needs_teacher:
        kinds = ", ".join(dict.fromkeys(objective.kinds))
        return None, f"off: no loss reads the teacher ({kinds}), it does not run"
    augment = ctx.config.data.augment
    to_split = (lambda idx: idx) if rows is None else _index_map(rows)
    if ctx.config.distill.teacher_cache and augment == "none" and not objective.needs_teacher_internals:
        path = ctx.run_dir / "cache" / f"teacher_logits.{sha256_file(ctx.run_dir / 'teacher.pt')[:16]}.npy"
        if not ctx.dist.broadcast_object(path.is_file()):  # one answer on every rank: all join, or none
            _write_teacher_cache(ctx, teacher, path)
        ctx.dist.barrier()  # the file is complete before any rank reads it
        cached = torch.from_numpy(np.load(path)).to(ctx.device)
        return (lambda idx, _inputs: cached[to_split(idx).to(ctx.device)]), f"on: logits computed once ({path.name})"

    def live(_idx, inputs):
        with torch.no_grad():
            return teacher(inputs).float()

    if not ctx.config.distill.teacher_cache:
        why = "off in config"
    elif augment != "none":
        why = f"off: augmentation {augment!r} changes inputs every epoch"
    else:  # caching every tapped map would cost N x (sum of C*H*W) floats: 1.9 GB for resnet18 on Fashion-MNIST
        kinds = sorted({k for k in objective.kinds if k in FEATURE_LOSS_KINDS})
        why = f"off: {', '.join(kinds)} read teacher internals every step (only logits are cached)"
    return live, why


def _write_teacher_cache(ctx: RunContext, teacher: torch.nn.Module, path) -> None:
    dist = ctx.dist
    mine = torch.from_numpy(ctx.data.train_x[dist.rank :: dist.world_size])
    logits = dist.gather_strided(predict_logits(teacher, mine, device=ctx.device).numpy())
    if dist.is_main:
        path.parent.mkdir(exist_ok=True)
        np.save(path.with_suffix(".partial.npy"), logits)
        path.with_suffix(".partial.npy").replace(path)


def _index_map(rows: np.ndarray):
    rows_t = torch.from_numpy(rows)
    return lambda idx: rows_t[idx]


# ---------------------------------------------------------------- shared


def _fit(ctx: RunContext, model, name: str, cfg, loss_fn, teacher, train_xy=None) -> TrainResult:
    data = ctx.data
    train_xy = train_xy or (torch.from_numpy(data.train_x), torch.from_numpy(data.train_y))
    val_xy = (torch.from_numpy(data.val_x), torch.from_numpy(data.val_y))
    work = ctx.run_dir / "work" / name
    with ctx.ui.progress(f"{name} epochs", cfg.epochs) as advance:
        result = train(model, train_xy, val_xy, cfg, loss_fn, work, key=ctx.stage_key, seed=ctx.config.seed,
                       augment=ctx.config.data.augment, teacher=teacher, device=ctx.device, progress=advance,
                       dist=ctx.dist)
    if result.resumed_from_epoch:
        ctx.ui.info(f"resumed {name} training from epoch {result.resumed_from_epoch} checkpoint")
    for note in result.notes:
        ctx.ui.info(note)
    ctx.dist.barrier()  # every rank is past reading last.pt before rank 0 removes it
    if ctx.dist.is_main:
        shutil.copyfile(work / "metrics.jsonl", ctx.run_dir / f"{name}.metrics.jsonl")
        (work / "last.pt").unlink(missing_ok=True)  # done: the epoch checkpoint has served its purpose
    return result


def _train_metrics(result: TrainResult) -> dict:
    return {"epochs": result.epochs_run, "best_epoch": result.best_epoch,
            "seconds_per_epoch": round(result.seconds_per_epoch, 3), "resumed_from_epoch": result.resumed_from_epoch,
            **({"notes": result.notes} if result.notes else {})}


def _val_accuracy(ctx: RunContext, model) -> float:
    from edgekd.distill.trainer import evaluate

    model.to(ctx.device)
    return evaluate(model, torch.from_numpy(ctx.data.val_x), torch.from_numpy(ctx.data.val_y), device=ctx.device)


def _save(ctx: RunContext, name: str, model, arch: str, kwargs: dict, config: dict, metrics: dict) -> None:
    if not ctx.dist.is_main:  # torchrun: rank 0 writes, the others hold the same weights
        return
    save_checkpoint(ctx.run_dir / name, model.cpu(), arch, kwargs, preprocess=ctx.data.preprocess.to_dict(),
                    classes=ctx.data.classes, config=config, metrics=metrics)
