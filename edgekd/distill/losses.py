"""The distillation objective: configured loss terms, dispatched by `kind` from model.yaml.

One family per module (response.py: ce, kd, dkd, tfkd; feature.py: fitnets, at;
relation.py: rkd); `LOSSES` maps each kind to a factory that builds its term.
`DistillObjective` sums the weighted terms and owns what they need beyond
logits: forward hooks on student and teacher, and trained adapters (its
parameters, which the trainer optimises and which never enter the student).

The trainer calls it like any loss: objective(student_logits, teacher_logits, labels)
— the hooks have already recorded the internals during both forward passes. Before
each step it calls `set_progress(steps done / total steps)`, which scheduled terms
(kd with alpha_end / temperature_end) read; a pure function of the step index, so a
resumed run continues with exactly the values the uninterrupted run would use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill import feature, relation, response
from edgekd.distill.response import kd_loss  # noqa: F401  (public, re-exported)
from edgekd.distill.taps import PRE_LOGITS, Tap, pair_stages
from edgekd.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass
class Batch:
    student_logits: torch.Tensor  # (B, K)
    teacher_logits: torch.Tensor | None  # (B, K); None when training without a teacher
    labels: torch.Tensor  # (B,); -1 marks a sample used without its label
    student: dict[str, torch.Tensor] = field(default_factory=dict)  # tapped internals by module name
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    progress: float = 0.0  # share of the training's optimizer steps done before this one, 0 -> 1


@dataclass
class Setup:
    """What a factory may need to build its term."""

    student: nn.Module | None = None
    teacher: nn.Module | None = None
    input_shape: tuple[int, ...] | None = None  # (C, H, W), for the stage-pairing probe
    label_smoothing: float = 0.0

    def models(self, kind: str) -> tuple[nn.Module, nn.Module]:
        if self.student is None or self.teacher is None:
            raise ConfigError(f"Loss kind {kind!r} reads model internals and needs both student and teacher.",
                              "Use it in distill.losses, where a teacher exists.")
        return self.student, self.teacher


class Term(nn.Module):
    """One configured loss: `compute(batch)` plus the internals it reads and the
    modules it trains (adapters)."""

    def __init__(self, compute: Callable[[Batch], torch.Tensor], student_taps=(), teacher_taps=(),
                 trained: nn.Module | None = None, note: str = "", needs_teacher: bool = True,
                 values: Callable[[float], dict[str, float]] | None = None):
        super().__init__()
        self.compute, self.trained, self.note, self.needs_teacher = compute, trained, note, needs_teacher
        self.student_taps, self.teacher_taps = list(student_taps), list(teacher_taps)
        self.values = values  # scheduled terms: progress -> their effective settings, for the metrics log

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.compute(batch)


def _ce(cfg, setup: Setup) -> Term:
    return Term(lambda b: response.ce_loss(b.student_logits, b.labels, setup.label_smoothing), needs_teacher=False)


def _kd(cfg, setup: Setup) -> Term:
    def values(progress: float) -> dict[str, float]:
        return {"alpha": response.scheduled(cfg.alpha, cfg.alpha_end, progress, cfg.schedule),
                "temperature": response.scheduled(cfg.temperature, cfg.temperature_end, progress, cfg.schedule)}

    def compute(b: Batch) -> torch.Tensor:
        now = values(b.progress)
        return response.kd_loss(b.student_logits, b.teacher_logits, b.labels, now["temperature"], now["alpha"],
                                setup.label_smoothing, cfg.divergence, cfg.divergence_mix)

    notes = ([f"{cfg.divergence} KL"] if cfg.divergence != "forward" else []) + (
        [f"{cfg.schedule} alpha {cfg.alpha:g}->{_end(cfg.alpha, cfg.alpha_end)}, "
         f"T {cfg.temperature:g}->{_end(cfg.temperature, cfg.temperature_end)}"] if cfg.scheduled else [])
    return Term(compute, note="; ".join(notes), values=values if cfg.scheduled else None)


def _end(start: float, end: float | None) -> str:
    return f"{start if end is None else end:g}"


def _tfkd(cfg, setup: Setup) -> Term:
    return Term(lambda b: response.tfkd_loss(b.student_logits, b.labels, cfg.a, cfg.temperature, cfg.alpha,
                                             setup.label_smoothing),
                note=f"virtual teacher a={cfg.a:g}, T={cfg.temperature:g}", needs_teacher=False)


def _dkd(cfg, setup: Setup) -> Term:
    return Term(lambda b: response.dkd_loss(b.student_logits, b.teacher_logits, b.labels, cfg.temperature,
                                            cfg.alpha, cfg.beta))


def _pairs(cfg, setup: Setup):
    student, teacher = setup.models(cfg.kind)
    named = [(p.student, p.teacher) for p in cfg.pairs] if cfg.pairs else None
    pairs = pair_stages(student, teacher, setup.input_shape, named)
    note = ", ".join(f"{p.student}<-{p.teacher}" for p in pairs)
    return pairs, note


def _fitnets(cfg, setup: Setup) -> Term:
    pairs, note = _pairs(cfg, setup)
    hints = feature.FitNets(pairs)
    return Term(lambda b: hints(b.student, b.teacher), [p.student for p in pairs], [p.teacher for p in pairs],
                trained=hints, note=note)


def _at(cfg, setup: Setup) -> Term:
    pairs, note = _pairs(cfg, setup)
    at = feature.AttentionTransfer(pairs, cfg.beta)
    return Term(lambda b: at(b.student, b.teacher), [p.student for p in pairs], [p.teacher for p in pairs], note=note)


def _rkd(cfg, setup: Setup) -> Term:
    setup.models(cfg.kind)
    return Term(lambda b: relation.rkd_loss(b.student[PRE_LOGITS], b.teacher[PRE_LOGITS], cfg.distance_weight,
                                            cfg.angle_weight), [PRE_LOGITS], [PRE_LOGITS], note="penultimate embeddings")


LOSSES: dict[str, Callable[[object, Setup], Term]] = {
    "ce": _ce, "kd": _kd, "dkd": _dkd, "tfkd": _tfkd, "fitnets": _fitnets, "at": _at, "rkd": _rkd,
}


class DistillObjective(nn.Module):
    """Σ weight·term. Its parameters are the terms' adapters; `close()` removes the hooks."""

    def __init__(self, terms: list[tuple[float, str, Term]], student: nn.Module | None = None,
                 teacher: nn.Module | None = None):
        super().__init__()
        self.weights = [w for w, _, _ in terms]
        self.kinds = [k for _, k, _ in terms]
        self.terms = nn.ModuleList(t for _, _, t in terms)
        s_names = [n for t in self.terms for n in t.student_taps]
        t_names = [n for t in self.terms for n in t.teacher_taps]
        self._student_tap = Tap(student, s_names) if s_names else None
        self._teacher_tap = Tap(teacher, t_names) if t_names else None
        self.progress, self._held = 0.0, False

    @property
    def needs_teacher_internals(self) -> bool:
        """True when a term reads more than logits: the teacher must run live (no logit cache)."""
        return self._teacher_tap is not None

    @property
    def needs_teacher(self) -> bool:
        """False when every term is teacher-free (ce, tfkd): the teacher need not run at all."""
        return any(term.needs_teacher for term in self.terms)

    def set_progress(self, progress: float) -> None:
        """The trainer's share of optimizer steps done (0 -> 1); scheduled terms read it."""
        if not self._held:
            self.progress = float(progress)

    def hold_progress(self, progress: float) -> None:
        """Pin the progress (set_progress is then ignored): QAT fine-tuning keeps the schedule's end values."""
        self.progress, self._held = float(progress), True

    def scheduled_values(self) -> dict[str, float]:
        """Effective settings of the scheduled terms now, e.g. {"kd[0].alpha": 0.7}; {} when none is scheduled."""
        return {f"{kind}[{i}].{name}": round(value, 6)
                for i, (kind, term) in enumerate(zip(self.kinds, self.terms)) if term.values is not None
                for name, value in term.values(self.progress).items()}

    def forward(self, student_logits, teacher_logits, labels) -> torch.Tensor:
        batch = Batch(student_logits.float(), None if teacher_logits is None else teacher_logits.float(), labels,
                      self._student_tap.features if self._student_tap else {},
                      self._teacher_tap.features if self._teacher_tap else {}, self.progress)
        return sum(w * term(batch) for w, term in zip(self.weights, self.terms))

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{k}" + (f" ({t.note})" if t.note else "")
                          for w, k, t in zip(self.weights, self.kinds, self.terms))

    def close(self) -> None:
        for tap in (self._student_tap, self._teacher_tap):
            if tap is not None:
                tap.close()


def build_objective(configs: list, *, student: nn.Module | None = None, teacher: nn.Module | None = None,
                    input_shape: tuple[int, ...] | None = None, label_smoothing: float = 0.0) -> DistillObjective:
    """The objective for `distill.losses`. Feature and relation terms need both
    models and the input shape (C, H, W) to pair stages."""
    setup = Setup(student, teacher, input_shape, label_smoothing)
    terms = [(cfg.weight, cfg.kind, LOSSES[cfg.kind](cfg, setup)) for cfg in configs]
    return DistillObjective(terms, student, teacher)


def build_loss(configs: list, label_smoothing: float = 0.0) -> DistillObjective:
    """A logits-only objective (ce, kd, dkd, tfkd)."""
    return build_objective(configs, label_smoothing=label_smoothing)


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """Plain supervised loss (teacher training, students trained alone)."""
    return lambda s, _t, y: F.cross_entropy(s, y, label_smoothing=label_smoothing)
