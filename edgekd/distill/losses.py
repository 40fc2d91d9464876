"""The distillation objective: configured loss terms, dispatched by `kind` from model.yaml.

One family per module (response.py: ce, kd, dkd; feature.py: fitnets, at;
relation.py: rkd); `LOSSES` maps each kind to a factory that builds its term.
`DistillObjective` sums the weighted terms and owns what they need beyond
logits: forward hooks on student and teacher, and trained adapters (its
parameters, which the trainer optimises and which never enter the student).

The trainer calls it like any loss: objective(student_logits, teacher_logits, labels)
— the hooks have already recorded the internals during both forward passes.
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
    labels: torch.Tensor  # (B,)
    student: dict[str, torch.Tensor] = field(default_factory=dict)  # tapped internals by module name
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)


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
                 trained: nn.Module | None = None, note: str = ""):
        super().__init__()
        self.compute, self.trained, self.note = compute, trained, note
        self.student_taps, self.teacher_taps = list(student_taps), list(teacher_taps)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.compute(batch)


def _ce(cfg, setup: Setup) -> Term:
    return Term(lambda b: response.ce_loss(b.student_logits, b.labels, setup.label_smoothing))


def _kd(cfg, setup: Setup) -> Term:
    return Term(lambda b: response.kd_loss(b.student_logits, b.teacher_logits, b.labels, cfg.temperature, cfg.alpha,
                                           setup.label_smoothing))


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
    "ce": _ce, "kd": _kd, "dkd": _dkd, "fitnets": _fitnets, "at": _at, "rkd": _rkd,
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

    @property
    def needs_teacher_internals(self) -> bool:
        """True when a term reads more than logits: the teacher must run live (no logit cache)."""
        return self._teacher_tap is not None

    def forward(self, student_logits, teacher_logits, labels) -> torch.Tensor:
        batch = Batch(student_logits.float(), None if teacher_logits is None else teacher_logits.float(), labels,
                      self._student_tap.features if self._student_tap else {},
                      self._teacher_tap.features if self._teacher_tap else {})
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
    """A logits-only objective (ce, kd, dkd)."""
    return build_objective(configs, label_smoothing=label_smoothing)


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """Plain supervised loss (teacher training, students trained alone)."""
    return lambda s, _t, y: F.cross_entropy(s, y, label_smoothing=label_smoothing)
