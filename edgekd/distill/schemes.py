"""Distillation schemes with more than one teacher -> student pass, usable without the pipeline.

- Multi-teacher: `EnsembleTeacher` turns several teachers into one whose "logits" are the
  log of the weighted mean of their probabilities (see its docstring for why probabilities).
- Chains: teacher-assistants (TAKD, Mirzadeh et al. 2020) and born-again generations
  (Furlanello et al. 2018) are one list of `Link`s (`plan_chain`); `run_chain` trains each
  link from the previous one through a caller-given `distil_link`, which is where the
  caller calls `trainer.train` with a work directory of the link's own (resume per link).
- Online distillation (deep mutual learning, Zhang et al. 2018): `train_peers` trains K
  students together, each with cross-entropy + KL(mean of the others' predictions || its own).

Nothing here knows about run directories or stages (edgekd.pipeline calls in, never the reverse).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import TrainConfig
from edgekd.distill.distributed import Dist
from edgekd.distill.trainer import Amp, _optimizer, _scheduler, _sharded_accuracy, as_split, eval_batches
from edgekd.models.io import build
from edgekd.models.torchfile import load_epoch_checkpoint, save_atomic

# ---------------------------------------------------------------- multi-teacher


class EnsembleTeacher(nn.Module):
    """Several teachers as one: forward returns log(Σ_i w_i softmax(z_i)), shape (B, K).

    Probabilities, not logits, are averaged: teachers of different architectures or
    training lengths have different logit scales, and a logit mean lets the most
    confident one dominate; a probability mean is a proper mixture in which every
    teacher counts by its weight. Its log is fed to the losses as the "teacher logits":
    softmax(log p / T) ∝ p^(1/T), so a KD temperature softens the mixture as it would
    one teacher's distribution, and with one teacher it reproduces that teacher's
    softmax at every T exactly (log_softmax only shifts logits).
    """

    def __init__(self, teachers: list[nn.Module], weights: list[float]):
        super().__init__()
        if len(teachers) != len(weights) or not teachers:
            raise ValueError("one weight per teacher, at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        total = sum(weights)
        self.register_buffer("log_weights", torch.tensor([math.log(w / total) for w in weights]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logsumexp over teachers of (log w_i + log softmax z_i): stable where probabilities underflow
        logp = torch.stack([F.log_softmax(t(x).float(), dim=1) for t in self.teachers])  # (N, B, K)
        return torch.logsumexp(logp + self.log_weights.view(-1, 1, 1), dim=0)


# ---------------------------------------------------------------- chains: assistants and generations


@dataclass(frozen=True)
class Link:
    """One teacher -> student pass of a chain; `name` names its work directory."""

    name: str  # "assistant1", ..., "student", "student.gen2", ...
    role: str  # "assistant" | "student" | "generation"
    index: int  # assistant number, or generation number (the student is generation 1)
    arch: str
    kwargs: dict
    seed: int  # initialisation and shuffling


def plan_chain(student: tuple[str, dict], assistants: list[tuple[str, dict]], generations: int = 1,
               seed: int = 0) -> list[Link]:
    """teacher -> assistants (in order) -> student -> generations 2..N of the student.

    The student keeps `seed` (a plain run is one link, exactly as before chains existed);
    born-again generation g starts from seed + g - 1: identical architecture, fresh weights.
    """
    links = [Link(f"assistant{i}", "assistant", i, arch, kwargs, seed)
             for i, (arch, kwargs) in enumerate(assistants, 1)]
    links.append(Link("student", "student", 1, *student, seed))
    links += [Link(f"student.gen{g}", "generation", g, *student, seed + g - 1) for g in range(2, generations + 1)]
    return links


@dataclass
class LinkResult:
    link: Link
    model: nn.Module
    val_accuracy: float
    info: dict = field(default_factory=dict)


# (link, freshly built student, its teacher) -> (val accuracy, info); trains the student in place
DistilLink = Callable[[Link, nn.Module, nn.Module], tuple[float, dict]]


def run_chain(teacher: nn.Module, links: list[Link], distil_link: DistilLink) -> list[LinkResult]:
    """Each link is distilled from the one before (the first from `teacher`) and then teaches the next."""
    results = []
    for link in links:
        torch.manual_seed(link.seed)
        student = build(link.arch, link.kwargs)
        accuracy, info = distil_link(link, student, teacher)
        results.append(LinkResult(link, student, accuracy, info))
        teacher = student.eval()
    return results


def chain_summary(results: list[LinkResult]) -> list[dict]:
    """What metrics record of a chain: each link's name, size and val accuracy, in order."""
    return [{"name": r.link.name, "role": r.link.role, "arch": r.link.arch,
             "params": sum(p.numel() for p in r.model.parameters()), "val_accuracy": r.val_accuracy}
            for r in results]


# ---------------------------------------------------------------- online: deep mutual learning


def forward_kl(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)), batch mean. The peers' target is a mean of probabilities,
    not a logit vector, so response.soft_divergence (logits on both sides) does not fit here."""
    return F.kl_div(F.log_softmax(logits, dim=1), target_probs, reduction="batchmean")


def mutual_loss(logits: list[torch.Tensor], labels: torch.Tensor, temperature: float = 1.0,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """Σ_k [CE(z_k, y) + T² · KL(mean_{j≠k} softmax(z_j / T) || softmax(z_k / T))].

    The other peers' predictions are detached: each peer learns from the others, none is
    pushed towards them through its own targets. All peers step at once from one forward
    pass (the paper alternates updates; simultaneous steps cost K forwards, not K²).
    """
    probs = [F.softmax(z.detach().float() / temperature, dim=1) for z in logits]
    total = logits[0].new_zeros(())
    for k, z in enumerate(logits):
        others = torch.stack([p for j, p in enumerate(probs) if j != k]).mean(0)
        total = total + F.cross_entropy(z.float(), labels, label_smoothing=label_smoothing)
        total = total + temperature**2 * forward_kl(others, z.float() / temperature)
    return total


@dataclass
class PeersResult:
    best_states: list[dict]  # per peer, its best-by-val-accuracy weights
    best_accuracies: list[float]
    best_epochs: list[int]
    epochs_run: int
    resumed_from_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds_per_epoch: float = 0.0

    @property
    def best_peer(self) -> int:
        return max(range(len(self.best_accuracies)), key=self.best_accuracies.__getitem__)


def train_peers(peers: list[nn.Module], train_xy, val_xy, cfg: TrainConfig, work_dir: Path, *, key: str,
                seed: int = 0, temperature: float = 1.0, augment: str = "none",
                device: torch.device = torch.device("cpu"), progress=None) -> PeersResult:
    """Train `peers` (in place) by deep mutual learning; one optimizer over all their parameters.

    Like trainer.train: each epoch's shuffle and augmentation are seeded from (seed, epoch),
    last.pt (every peer, optimizer, scheduler, RNG) is written each epoch and resumed when
    its key matches, metrics.jsonl gets one line per epoch. Early stopping follows the best peer.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for peer in peers:
        peer.to(device=device, memory_format=memory_format)
    batches = as_split(train_xy).batches(cfg.batch_size, shuffle=True, seed=seed, augment=augment)
    val_batches = eval_batches(as_split(val_xy))

    def accuracies():
        return [_sharded_accuracy(p, val_batches, device, memory_format, Dist()) for p in peers]

    optimizer = _optimizer(peers, cfg)
    loop = _PeerLoop(peers, optimizer, _scheduler(optimizer, cfg, math.ceil(len(batches) / cfg.batch_size)), cfg,
                     Amp(cfg.amp, device), device, memory_format, batches, temperature)
    state = _resume_peers(work_dir / "last.pt", key, loop)
    start_epoch = state["epoch"]
    if start_epoch == 0:  # a fresh training: rows of an earlier one must not be read as this one's
        (work_dir / "metrics.jsonl").unlink(missing_ok=True)
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        loss = _peers_epoch(loop, epoch)
        scores = accuracies()
        seconds = time.perf_counter() - started
        row = {"epoch": epoch + 1, "loss": loss, "val_accuracy": max(scores), "peer_val_accuracy": scores,
               "seconds": seconds, "images_per_s": len(batches) * len(peers) / seconds,
               "lr": optimizer.param_groups[0]["lr"]}
        _record_peers(state, row, peers, epoch)
        _save_peers(work_dir / "last.pt", key, loop, state)
        with (work_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if progress is not None:
            progress(loss=loss, val_acc=row["val_accuracy"], img_s=round(row["images_per_s"]))
        if cfg.early_stopping and state["bad_epochs"] >= cfg.early_stopping:
            break
    if state["epoch"] == 0:  # zero epochs asked: the peers as they are
        state["best_states"] = [_cpu_state(p) for p in peers]
        state["best_accuracies"] = accuracies()
    history = state["history"]
    return PeersResult(state["best_states"], state["best_accuracies"], state["best_epochs"], state["epoch"],
                       start_epoch, history, sum(h["seconds"] for h in history) / max(1, len(history)))


@dataclass
class _PeerLoop:
    peers: list[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: object
    cfg: TrainConfig
    amp: Amp
    device: torch.device
    memory_format: torch.memory_format
    batches: object  # edgekd.data.splitset.Batches: shuffled and augmented per epoch, as trainer.train's
    temperature: float


def _peers_epoch(loop: _PeerLoop, epoch: int) -> float:
    """One epoch; returns the mean per-peer loss."""
    for peer in loop.peers:
        peer.train()
    total = 0.0
    for idx, inputs, labels in loop.batches.epoch(epoch):  # every peer sees the same batch
        inputs = inputs.to(loop.device, non_blocking=True).contiguous(memory_format=loop.memory_format)
        labels = labels.to(loop.device, non_blocking=True)
        with loop.amp.autocast():
            loss = mutual_loss([peer(inputs) for peer in loop.peers], labels, loop.temperature,
                               loop.cfg.label_smoothing)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.amp.step(loss, loop.optimizer, loop.cfg.grad_clip)
        loop.scheduler.step()
        total += loss.item() * len(idx)
    return total / max(1, len(loop.batches)) / len(loop.peers)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _fresh_peers_state(k: int) -> dict:
    return {"epoch": 0, "best_accuracies": [-1.0] * k, "best_epochs": [0] * k, "best_states": [None] * k,
            "best_overall": -1.0, "bad_epochs": 0, "history": []}


def _record_peers(state: dict, row: dict, peers: list[nn.Module], epoch: int) -> None:
    state["history"].append(row)
    for k, (peer, accuracy) in enumerate(zip(peers, row["peer_val_accuracy"])):
        if accuracy > state["best_accuracies"][k]:
            state["best_accuracies"][k], state["best_epochs"][k] = accuracy, epoch + 1
            state["best_states"][k] = _cpu_state(peer)
    if row["val_accuracy"] > state["best_overall"]:
        state["best_overall"], state["bad_epochs"] = row["val_accuracy"], 0
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch + 1


def _resume_peers(path: Path, key: str, loop: _PeerLoop) -> dict:
    ckpt = load_epoch_checkpoint(path, key)
    if ckpt is None or len(ckpt["peers"]) != len(loop.peers):
        return _fresh_peers_state(len(loop.peers))
    for peer, sd in zip(loop.peers, ckpt["peers"]):
        peer.load_state_dict(sd)
    loop.optimizer.load_state_dict(ckpt["optimizer"])
    loop.scheduler.load_state_dict(ckpt["scheduler"])
    if loop.amp.scaler is not None and ckpt.get("scaler") is not None:
        loop.amp.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"])
    return ckpt["state"]


def _save_peers(path: Path, key: str, loop: _PeerLoop, state: dict) -> None:
    save_atomic({"key": key, "peers": [p.state_dict() for p in loop.peers], "optimizer": loop.optimizer.state_dict(),
                 "scheduler": loop.scheduler.state_dict(), "rng": torch.get_rng_state(), "state": state,
                 "scaler": loop.amp.scaler.state_dict() if loop.amp.scaler else None}, path)
