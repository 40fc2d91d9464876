"""Feature-based losses: they compare intermediate maps read through forward hooks.

Features are (B, C, H, W). Where a pair's spatial sizes differ (possible only
with hand-named pairs), the larger map is average-pooled to the smaller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.taps import Pair


def match_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps to the smaller's (H, W)."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al. 2015): mean squared error between the (adapted) student
    map and the teacher's, averaged over batch, channels and positions."""
    student, teacher = match_size(student, teacher)
    return F.mse_loss(student, teacher)


def attention_map(feature: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017: Q = mean over channels of |A_c|^p, flattened to
    (B, H*W) and L2-normalised per sample."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Mean over batch and positions of (Q_S − Q_T)², as in the authors' code;
    channel counts may differ."""
    student, teacher = match_size(student, teacher)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def adapter(student_channels: int, teacher_channels: int) -> nn.Module:
    """FitNets' regressor: a learned 1x1 conv from student to teacher channels (identity when equal)."""
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


class FitNets(nn.Module):
    """Sum of hint losses over the pairs, through trained adapters."""

    def __init__(self, pairs: list[Pair]):
        super().__init__()
        self.pairs = pairs
        self.adapters = nn.ModuleList(adapter(p.student_shape[0], p.teacher_shape[0]) for p in pairs)

    def forward(self, student: dict, teacher: dict) -> torch.Tensor:
        return sum(hint_loss(a(student[p.student].float()), teacher[p.teacher].float())
                   for p, a in zip(self.pairs, self.adapters))


class AttentionTransfer(nn.Module):
    """beta/2 · Σ over pairs of `at_loss` (the paper uses beta = 1000)."""

    def __init__(self, pairs: list[Pair], beta: float):
        super().__init__()
        self.pairs, self.beta = pairs, beta

    def forward(self, student: dict, teacher: dict) -> torch.Tensor:
        return self.beta / 2 * sum(at_loss(student[p.student].float(), teacher[p.teacher].float()) for p in self.pairs)
