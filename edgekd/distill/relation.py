"""Relation-based losses: the student matches how the teacher relates samples in a batch.

Embeddings are the penultimate features (B, D), read at the classifier's input;
student and teacher dimensions may differ. Both terms follow Park et al.,
"Relational Knowledge Distillation", CVPR 2019, and the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, B) Euclidean distances, zero diagonal (no sqrt at 0: its gradient is infinite)."""
    squared = e.pow(2).sum(1)
    d2 = (squared[:, None] + squared[None, :] - 2 * e @ e.t()).clamp_min(eps)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d2.sqrt() * off_diagonal


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber loss between distance matrices, each divided by its mean off-diagonal distance."""
    with torch.no_grad():
        t = pairwise_distances(teacher)
        t = t / t[t > 0].mean()
    s = pairwise_distances(student)
    s = s / s[s > 0].mean()
    return F.smooth_l1_loss(s, t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    # (B, B, D) unit vectors e_j − e_i; angle cosines <e_i−e_j, e_k−e_j> for every triplet: (B*B*B,)
    unit = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber loss between the cosines of the angles every sample triplet forms.
    Memory is B³ floats: 2M at batch 128."""
    with torch.no_grad():
        t = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), t)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float, angle_weight: float) -> torch.Tensor:
    student, teacher = student.float(), teacher.float()
    total = student.new_zeros(())
    if distance_weight:
        total = total + distance_weight * rkd_distance(student, teacher)
    if angle_weight:
        total = total + angle_weight * rkd_angle(student, teacher)
    return total
