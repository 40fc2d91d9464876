"""One training loop for teachers, students and distillation.

Data are splits (edgekd.data.splitset): in-memory tensors (digits, idx; a plain
(x, y) tuple is taken as one) or image files streamed by DataLoader workers
(imagefolder). Each epoch's shuffle and augmentation are seeded from (seed, epoch),
and the global RNG state is saved, so a run resumed from an epoch checkpoint
continues exactly as the uninterrupted run would have. Each metrics row records
`data_wait`: the share of the epoch's training time spent waiting for batches.

`loss_fn` is any (student_logits, teacher_logits, labels) -> loss callable. When
it has `set_progress`, it is told before every step the share of the training's
optimizer steps already done (epoch * steps_per_epoch + batch) / (epochs *
steps_per_epoch): derived from the step index alone, so a resumed run feeds it
the same values. When it is an nn.Module (edgekd.distill.losses.DistillObjective) its parameters, the
feature adapters, are trained with the model and saved with the epoch
checkpoint, but never enter the model's weights.

`train.augment` draws per-sample views (edgekd.distill.views) in the DataLoader workers that read
the split, seeded per (seed, sample, epoch), after the split's own transform (the eval transform, or
timm's picture transform with data.augment: timm; it replaces data.augment crop/crop_flip), and
mixes the collated batch on the device (mixup/cutmix): the mixed tensor is what both the teacher
function and the model receive. A teacher function with `views` = K (edgekd.distill.replay.
ReplayTeacher) replays stored logits of K fixed views: the trainer fills its cache once, from the
very batches training makes, before the first epoch, and shows epoch e the views of e mod K (with
mixup/cutmix the whole epoch, order and mixing included, of e mod K, so the mixed rows repeat).
A PairedSplit (edgekd.data.paired: a student of its own input) carries the teacher's view of every
batch's rows: the trainer hands that tensor to the teacher function, with train.augment's geometry
drawn once per row for both views and mixup/cutmix mixing both with one draw.
`train.ema` keeps a weight average (edgekd.distill.ema), scored every epoch
next to the model; the better of the two can become the best weights (TrainResult.best_weights).
On a CPU device, `threads="auto"` (the default) trains on one torch thread when the machine is
already busy (`pick_threads`), and says so in TrainResult.notes; every metrics row records the
thread count.

Work directory layout (one per trained model):
    last.pt         model, optimizer, scheduler, RNG, best weights, loss state, weight average — every epoch
    metrics.jsonl   one line per epoch
    tensorboard/    event files, with `tensorboard: true`
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from edgekd.bench.sysinfo import usable_cores
from edgekd.config import TrainConfig
from edgekd.data.paired import PairedSplit
from edgekd.data.splitset import TensorSplit, augment_batch, eval_batch_size  # noqa: F401 (augment_batch: schemes)
from edgekd.distill.distributed import Dist
from edgekd.distill.ema import WeightAverage, make_average
from edgekd.distill.losses import LossFn
from edgekd.distill.views import BatchViews, make_views
from edgekd.errors import ConfigError
from edgekd.models.torchfile import load_epoch_checkpoint, save_atomic

TeacherFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]  # (indices, inputs) -> logits


@dataclass
class TrainResult:
    best_state: dict
    best_accuracy: float
    best_epoch: int
    epochs_run: int
    resumed_from_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. tensorboard skipped, and why
    best_weights: str = "model"  # "ema": best_state is the weight average (train.ema), which scored higher


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_threads(requested: int | str | None, load_average: float, cores: int,
                 omp_num_threads: str | None = None) -> int | None:
    """Torch intra-op threads for a training on the CPU; None keeps the count torch has (one per
    core unless the process or OMP_NUM_THREADS chose another).

    requested: a count (kept as asked), None (leave torch alone), or "auto": one thread when the
    machine is already busy (1-minute load average >= usable cores), as long as OMP_NUM_THREADS
    is unset (set, it is the user's, or torchrun's, choice). Why: on a machine busy with other jobs,
    two OpenMP threads make every op of a small model wait at a barrier for a thread the scheduler
    has put aside; measured on a shared 2-core AMD EPYC at load average 15, a training step of an
    86K-parameter student took 3.1 s on 2 threads and 0.29 s on 1 (benchmarks/distill_fashion_mnist.py)."""
    if requested is None:
        return None
    if requested != "auto":
        if not str(requested).isdigit() or int(requested) < 1:
            raise ConfigError(f"threads {requested!r} is not a thread count.", "Give a positive number of threads, "
                              "\"auto\" (one thread on a busy machine) or None (leave torch's count).")
        return int(requested)
    if omp_num_threads:
        return None
    return 1 if load_average >= cores else None


def _set_training_threads(requested: int | str | None, device: torch.device, history: list[dict],
                          notes: list[str]) -> int:
    """Sets torch's thread count for a training on the CPU, saying a change in `notes`; returns the
    count before, which train() restores. A CUDA training is left alone: its host threads feed the device.

    "auto" is decided at the start of each training (pick_threads on the load then: a long-lived process,
    a test suite or a notebook, follows the machine rather than the load at its first training), and a
    resumed training keeps the count its finished epochs ran with: results depend (slightly) on the
    thread count, so this keeps a resumed training exact."""
    before = torch.get_num_threads()
    if device.type != "cpu" or requested is None:
        return before
    if requested != "auto":
        chosen, why = pick_threads(requested, 0.0, usable_cores()), "as asked"
    elif history and history[-1].get("threads"):
        chosen, why = history[-1]["threads"], "threads auto: as the epochs this training resumes from"
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        chosen = pick_threads("auto", load, usable_cores(), os.environ.get("OMP_NUM_THREADS"))
        why = f"threads auto: load average {load:.1f}, {usable_cores()} usable cores"
    if chosen and chosen != before:
        torch.set_num_threads(chosen)
        notes.append(f"torch threads: {chosen} instead of {before} ({why})")
    return before


def train(
    model: torch.nn.Module,
    train_xy,
    val_xy,
    cfg: TrainConfig,
    loss_fn: LossFn,
    work_dir: Path,
    *,
    key: str,
    seed: int = 0,
    augment: str = "none",
    teacher: TeacherFn | None = None,
    device: torch.device = torch.device("cpu"),
    progress=None,
    dist: Dist | None = None,
    step_progress=None,
    threads: int | str | None = "auto",
) -> TrainResult:
    """Train `model` in place; returns the best-by-val-accuracy weights.

    train_xy, val_xy: splits (TensorSplit, StreamSplit) or (x, y) tensor tuples.

    dist: under torchrun, every rank calls this with the same arguments; the model is
    wrapped in DistributedDataParallel, each rank trains on its shard of every epoch
    (`Dist.shard`), validation is sharded and summed, and only rank 0 writes files.

    progress(**fields): after each epoch (loss, val_acc, img_s, wait). step_progress(epoch, images):
    a context manager yielding advance(n) for the epoch's training images (edgekd.ui.UI.progress with
    unit "images": steps done, rate, ETA within the epoch).

    threads: torch's intra-op threads on a CPU device while training (pick_threads): "auto", a
    count, or None to leave them as the caller set them.
    """
    dist = dist or Dist()
    cfg = _scaled_lr(cfg, dist)
    work_dir.mkdir(parents=True, exist_ok=True)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    objective = loss_fn if isinstance(loss_fn, torch.nn.Module) else None
    if objective is not None:
        objective.to(device)
        _check_objective_under_ddp(objective, dist)
    split = as_split(train_xy)
    views = make_views(cfg, split, model, seed)
    replay_views = getattr(teacher, "views", None)  # a ReplayTeacher: epoch e shows view e mod K
    # train.augment's views follow the split's own transform (timm's included) and replace crop/crop_flip;
    # two views of each row (PairedSplit) get its geometry drawn once per row for both, not per sample
    paired = isinstance(split, PairedSplit)
    per_view = {"geometry": views.geometry} if paired and views is not None else {}
    batches = split.batches(cfg.batch_size, shuffle=True, seed=seed,
                            augment=augment if cfg.augment is None or augment == "timm" else "none",
                            rank=dist.rank, world_size=dist.world_size,
                            transform=views.sample if views is not None and not paired else None,
                            views=replay_views, **per_view)
    val_batches = eval_batches(as_split(val_xy), dist)
    optimizer = _optimizer([model] + ([objective] if objective is not None else []), cfg)
    steps_per_epoch = math.ceil(len(batches) / cfg.batch_size)
    loop = _Loop(model, dist.wrap(model), loss_fn, optimizer, _scheduler(optimizer, cfg, steps_per_epoch), cfg,
                 Amp(cfg.amp, device), teacher, device, memory_format, batches, val_batches, dist,
                 views=views, average=make_average(model, cfg), step_progress=step_progress,
                 paired=split if paired else None)
    # another world size shards and schedules differently: resume only the same one
    key = key if not dist.enabled else f"{key}+world{dist.world_size}"
    state = _resume(work_dir / "last.pt", key, loop)
    start_epoch = state["epoch"]
    if start_epoch == 0 and dist.is_main:  # a fresh training: rows of an earlier one must not be read as this one's
        (work_dir / "metrics.jsonl").unlink(missing_ok=True)
    writer, notes = _tensorboard(cfg, work_dir) if dist.is_main else (None, [])
    threads_before = _set_training_threads(threads, device, state["history"], notes)
    try:
        if replay_views and cfg.epochs > start_epoch:
            # under torchrun each rank runs the teacher on its own shard; rank 0 writes the file (edgekd.distill.replay)
            teacher.fill(lambda view: _teacher_inputs(loop, view), loop.amp.autocast, dist=dist,
                         mixing=views is not None and views.mixing)
        for epoch in range(start_epoch, cfg.epochs):
            row = _epoch_row(loop, epoch)
            _record(state, row, loop, epoch)
            if dist.is_main:  # rank 0 writes; every rank reads last.pt when resuming
                _save(work_dir / "last.pt", key, loop, state)
                with (work_dir / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if writer is not None:
                for name in ("loss", "val_accuracy", "lr", "images_per_s", "data_wait"):
                    writer.add_scalar(name, row[name], row["epoch"])
            if progress is not None and dist.is_main:
                progress(epoch=row["epoch"], loss=row["loss"], val_acc=row["val_accuracy"],
                         img_s=round(row["images_per_s"]),
                         wait=f"{row['data_wait']:.0%}")
            if cfg.early_stopping and state["bad_epochs"] >= cfg.early_stopping:
                break
    finally:
        torch.set_num_threads(threads_before)  # the caller's count again: no global state left behind
        if writer is not None:
            writer.close()
    if state["best_state"] is None:  # zero epochs asked: the model as it is
        state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state["best_accuracy"] = _sharded_accuracy(model, val_batches, device, memory_format, dist)
    history = state["history"]
    return TrainResult(
        best_state=state["best_state"],
        best_accuracy=state["best_accuracy"],
        best_epoch=state["best_epoch"],
        epochs_run=state["epoch"],
        resumed_from_epoch=start_epoch,
        history=history,
        seconds_per_epoch=sum(h["seconds"] for h in history) / max(1, len(history)),
        notes=notes,
        best_weights=state.get("best_weights", "model"),
    )


class Amp:
    """Mixed precision: autocast to bf16 (CPU or CUDA) or fp16 (CUDA, with a GradScaler
    so small fp16 gradients do not flush to zero). fp16 on CPU is refused, not swapped."""

    def __init__(self, mode: str, device: torch.device):
        if mode == "fp16" and device.type != "cuda":
            raise ConfigError("train.amp 'fp16' needs a CUDA device; this run trains on the CPU.",
                              "Use amp: bf16 (CPU autocast) or amp: none.")
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer, grad_clip: float | None) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)  # clip the true gradients
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


@dataclass
class _Loop:
    model: torch.nn.Module  # the network itself: state dicts, evaluation
    net: torch.nn.Module  # what the forward pass calls: `model`, or its DDP wrapper under torchrun
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: object
    cfg: TrainConfig
    amp: Amp
    teacher: TeacherFn | None
    device: torch.device
    memory_format: torch.memory_format
    batches: object  # edgekd.data.splitset.Batches: this rank's training batches, per epoch
    val_batches: object  # this rank's stride of the validation split
    dist: Dist
    views: BatchViews | None = None  # train.augment: per-sample views, mixup/cutmix (edgekd.distill.views)
    average: WeightAverage | None = None  # train.ema
    step_progress: Callable | None = None  # (epoch, images) -> context manager yielding advance(n)
    paired: PairedSplit | None = None  # the split, when it carries the teacher's view of each batch

    def data_epoch(self, epoch: int) -> int:
        """The epoch whose batches epoch `epoch` shows: itself, or with a replay cache of K views and
        mixing epoch mod K (order, views and mixing repeat, so the stored mixed rows are exact)."""
        replay = getattr(self.teacher, "views", None)
        return epoch % replay if replay and self.views is not None and self.views.mixing else epoch


def _epoch_row(loop: _Loop, epoch: int) -> dict:
    started, waited = time.perf_counter(), loop.batches.wait_seconds
    loss = _one_epoch(loop, epoch)
    training = time.perf_counter() - started
    loop.dist.sync_buffers(loop.model)  # one set of BN statistics on every rank before scoring and saving
    accuracy = _sharded_accuracy(loop.model, loop.val_batches, loop.device, loop.memory_format, loop.dist)
    averaged = ({"val_accuracy_ema": _sharded_accuracy(loop.average.module, loop.val_batches, loop.device,
                                                        loop.memory_format, loop.dist)}
                if loop.average is not None else {})
    seconds = time.perf_counter() - started
    row = {"epoch": epoch + 1, "loss": loss, "val_accuracy": accuracy, **averaged, "seconds": seconds,
           "images_per_s": len(loop.batches) * loop.dist.world_size / seconds,
           "data_wait": round((loop.batches.wait_seconds - waited) / max(training, 1e-9), 4),
           "lr": loop.optimizer.param_groups[0]["lr"], "threads": torch.get_num_threads()}
    # scheduled loss settings (kd alpha/temperature) as used in the epoch's last step
    return {**row, **getattr(loop.loss_fn, "scheduled_values", dict)()}


def _record(state: dict, row: dict, loop: _Loop, epoch: int) -> None:
    """Keep the epoch's weights when they beat every earlier epoch on the validation split: the
    model's, or with train.ema the average's when it scores higher (a tie goes to the model)."""
    state["history"].append(row)
    source, accuracy, net = "model", row["val_accuracy"], loop.model
    if loop.average is not None and row["val_accuracy_ema"] > accuracy:
        source, accuracy, net = "ema", row["val_accuracy_ema"], loop.average.module
    if accuracy > state["best_accuracy"]:
        state.update(best_accuracy=accuracy, best_epoch=epoch + 1, bad_epochs=0, best_weights=source,
                     best_state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch + 1


def _one_epoch(loop: _Loop, epoch: int) -> float:
    loop.model.train()
    if isinstance(loop.loss_fn, torch.nn.Module):
        loop.loss_fn.train()
    total, count = 0.0, 0
    steps_per_epoch = math.ceil(len(loop.batches) / loop.cfg.batch_size)
    set_progress = getattr(loop.loss_fn, "set_progress", None)
    if hasattr(loop.teacher, "set_epoch"):
        loop.teacher.set_epoch(epoch)
    shown = loop.step_progress(epoch, len(loop.batches)) if loop.step_progress else contextlib.nullcontext()
    with shown as advance:
        # the same permutation on every rank, each its stride (edgekd.data.splitset)
        for step, idx, inputs, labels, teacher_inputs in _steps(loop, loop.data_epoch(epoch)):
            if set_progress is not None:
                set_progress((epoch * steps_per_epoch + step) / max(1, loop.cfg.epochs * steps_per_epoch))
            with loop.amp.autocast():
                teacher_logits = loop.teacher(idx, teacher_inputs) if loop.teacher is not None else None
                loss = loop.loss_fn(loop.net(inputs), teacher_logits, labels)
            loop.optimizer.zero_grad(set_to_none=True)
            loop.amp.step(loss, loop.optimizer, loop.cfg.grad_clip)
            loop.scheduler.step()
            if loop.average is not None:
                loop.average.update(loop.model, step=epoch * steps_per_epoch + step + 1)
            total += loss.item() * len(idx)
            count += len(idx)
            if advance is not None:
                advance(len(idx))
    total, count = loop.dist.all_reduce_sum([total, count])
    return total / max(1, count)


def _steps(loop: _Loop, data_epoch: int):
    """(step, idx, inputs, labels, teacher inputs) of `data_epoch` as the training step uses them: on the
    device, mixed with mixup/cutmix (labels then (B, classes) soft targets). The teacher's inputs are the
    student's tensor itself, or with a PairedSplit the teacher's view of the same rows, mixed alike."""
    for step, (idx, inputs, labels) in enumerate(loop.batches.epoch(data_epoch)):
        partner = loop.paired.teacher_view(idx) if loop.paired is not None else None  # before rows are dropped
        if loop.views is not None:
            keep = len(loop.views.usable(idx, inputs, labels)[0])
            idx, inputs, labels = idx[:keep], inputs[:keep], labels[:keep]
            partner = partner[:keep] if partner is not None else None
            if not len(idx):
                continue
        inputs, labels, partner = _batch(loop, inputs, labels, data_epoch, step, partner)
        yield step, idx, inputs, labels, inputs if partner is None else partner


def _teacher_inputs(loop: _Loop, view: int):
    """(idx, teacher inputs) of every step of data epoch `view`: what a replay cache stores the teacher's logits of."""
    for _, idx, _, _, teacher_inputs in _steps(loop, view):
        yield idx, teacher_inputs


def _batch(loop: _Loop, inputs, labels, epoch: int, step: int, partner=None):
    """The step's (inputs, labels, partner) on the device. With train.augment the inputs are already views
    (drawn in the loader's workers, or per row for both views of a PairedSplit); mixup/cutmix mixes them
    here, seeded per (seed, epoch, step), into one tensor (teacher and student both get it) and (B, classes)
    soft labels; `partner`, the teacher's view of the same rows, is mixed with the same draw."""
    inputs = inputs.to(loop.device, non_blocking=True).contiguous(memory_format=loop.memory_format)
    labels = labels.to(loop.device, non_blocking=True)
    if partner is not None:
        partner = partner.to(loop.device, non_blocking=True)
    if loop.views is not None and partner is None:
        inputs, labels = loop.views.mix(inputs, labels, epoch, step)
    elif loop.views is not None:
        inputs, labels, partner = loop.views.mix_views(inputs, labels, partner, epoch, step)
    if loop.views is not None:
        inputs = inputs.contiguous(memory_format=loop.memory_format)
    return inputs, labels, partner


def _check_objective_under_ddp(objective: torch.nn.Module, dist: Dist) -> None:
    """Trained adapters (FitNets) live outside the DDP-wrapped student: their gradients would
    not be averaged across ranks, so the ranks would drift apart. Refuse rather than diverge."""
    if dist.enabled and any(p.requires_grad for p in objective.parameters()):
        raise ConfigError("Losses with trained adapters (fitnets) are not supported under torchrun yet.",
                          "Run this config in a single process, or use kd/dkd/at/rkd losses under torchrun.")


def _scaled_lr(cfg: TrainConfig, dist: Dist) -> TrainConfig:
    """Linear scaling rule (Goyal et al. 2017): N ranks x batch_size samples per step -> N x lr."""
    if cfg.scale_lr and dist.enabled:
        return cfg.model_copy(update={"lr": cfg.lr * dist.world_size})
    return cfg


def as_split(data):
    """A split as is; an (x, y) tuple of tensors as a TensorSplit."""
    return TensorSplit(*data) if isinstance(data, tuple) else data


def eval_batches(split, dist: Dist | None = None):
    """In order, this rank's stride (every sample once across ranks), batches sized for memory."""
    dist = dist or Dist()
    return split.batches(eval_batch_size(split.sample_shape), shuffle=False, rank=dist.rank,
                         world_size=dist.world_size)


@torch.inference_mode()
def predict_batches(model, batches, *, device=torch.device("cpu"), memory_format=torch.contiguous_format,
                    progress=None) -> torch.Tensor:
    """Logits (N, classes) on the CPU, for one in-order pass over `batches`; `progress(n)` after each batch."""
    was_training = model.training
    model.eval()
    out = []
    for _, x, _ in batches.epoch(0):
        out.append(model(x.to(device).contiguous(memory_format=memory_format)).float().cpu())
        if progress is not None:
            progress(len(x))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


@torch.inference_mode()
def split_accuracy(model, split, *, device=torch.device("cpu"), dist: Dist | None = None) -> float:
    """Accuracy over a whole split, streamed (under torchrun: strides, counts summed)."""
    return _sharded_accuracy(model, eval_batches(as_split(split), dist), device, torch.contiguous_format,
                             dist or Dist())


def _sharded_accuracy(model, val_batches, device, memory_format, dist: Dist) -> float:
    """Validation accuracy; under torchrun each rank scores a stride of the split and the counts are summed."""
    was_training = model.training
    model.eval()
    correct = count = 0.0
    with torch.inference_mode():
        for _, x, y in val_batches.epoch(0):
            logits = model(x.to(device).contiguous(memory_format=memory_format))
            correct += float((logits.argmax(1).cpu() == y).sum())
            count += len(y)
    model.train(was_training)
    correct, count = dist.all_reduce_sum([correct, count])
    return correct / max(1.0, count)


def _tensorboard(cfg: TrainConfig, work_dir: Path):
    """A SummaryWriter under work_dir/tensorboard, or None and a note saying why not."""
    if not cfg.tensorboard:
        return None, []
    try:
        from torch.utils.tensorboard import (
            SummaryWriter,  # needs the optional `tensorboard` package
        )
    except ImportError:
        return None, ["tensorboard: skipped, the tensorboard package is not installed (pip install tensorboard)"]
    return SummaryWriter(str(work_dir / "tensorboard")), [f"tensorboard: {work_dir / 'tensorboard'}"]


@torch.inference_mode()
def evaluate(model, x, y, *, device=torch.device("cpu"), batch_size: int | None = None,
             memory_format=torch.contiguous_format) -> float:
    return float((predict_logits(model, x, device=device, batch_size=batch_size, memory_format=memory_format).argmax(1) == y).float().mean())


@torch.inference_mode()
def predict_logits(model, x, *, device=torch.device("cpu"), batch_size: int | None = None,
                   memory_format=torch.contiguous_format) -> torch.Tensor:
    """Logits of in-memory inputs x; batch_size None: sized for memory (eval_batch_size), not a fixed count."""
    batch_size = batch_size or eval_batch_size(tuple(x.shape[1:]))
    was_training = model.training
    model.eval()
    out = [model(x[i : i + batch_size].to(device).contiguous(memory_format=memory_format)).float().cpu()
           for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def _optimizer(modules: list[torch.nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-d parameters), as timm's optimizer factory does.
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=min(0.5, max(0.01, cfg.warmup_epochs / max(1, cfg.epochs))))
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fresh_state() -> dict:
    return {"epoch": 0, "best_accuracy": -1.0, "best_epoch": 0, "best_state": None, "bad_epochs": 0, "history": []}


def _resume(path: Path, key: str, loop: _Loop) -> dict:
    """Continue from last.pt when it belongs to this exact training (same key)."""
    ckpt = load_epoch_checkpoint(path, key)
    if ckpt is None:
        return _fresh_state()
    loop.model.load_state_dict(ckpt["model"])
    loop.optimizer.load_state_dict(ckpt["optimizer"])
    loop.scheduler.load_state_dict(ckpt["scheduler"])
    if isinstance(loop.loss_fn, torch.nn.Module) and ckpt.get("loss") is not None:
        loop.loss_fn.load_state_dict(ckpt["loss"])
    if loop.amp.scaler is not None and ckpt.get("scaler") is not None:
        loop.amp.scaler.load_state_dict(ckpt["scaler"])
    if loop.average is not None and ckpt.get("ema") is not None:
        loop.average.load_state_dict(ckpt["ema"])
    torch.set_rng_state(ckpt["rng"])
    return ckpt["state"]


def _save(path: Path, key: str, loop: _Loop, state: dict) -> None:
    loss_state = loop.loss_fn.state_dict() if isinstance(loop.loss_fn, torch.nn.Module) else None
    save_atomic({"key": key, "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
                 "scheduler": loop.scheduler.state_dict(), "rng": torch.get_rng_state(), "state": state,
                 "loss": loss_state, "scaler": loop.amp.scaler.state_dict() if loop.amp.scaler else None,
                 "ema": loop.average.state_dict() if loop.average is not None else None}, path)
