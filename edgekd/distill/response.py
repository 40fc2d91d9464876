"""Response-based losses: they read the logits only, so cached teacher logits serve them.

Logits are (B, K); labels (B,). Every function returns a scalar averaged over the batch.

Labels may be -1: a sample used without its label (`distill.unlabeled_fraction`).
Terms that read the label average over the labeled samples only and give 0 on
a batch without any; terms that read only the teacher use every sample.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

UNLABELED = -1
Divergence = Literal["forward", "reverse", "symmetric"]


def soft_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    divergence: Divergence = "forward", mix: float = 0.5) -> torch.Tensor:
    """T²·D(p_T^τ, p_S^τ) between the softened distributions, averaged over the batch.

    forward   KL(p_T ‖ p_S): Hinton's KD; mass-covering — the student spreads over every
              class the teacher gives weight to.
    reverse   KL(p_S ‖ p_T): mode-seeking — the student may concentrate on the teacher's
              main modes and is punished for mass where the teacher has little.
    symmetric (1 − mix)·forward + mix·reverse (mix 0.5: half Jeffreys' divergence).

    Gradients flow into both arguments; pass `teacher_logits.detach()` when the other
    side must stay fixed (a live peer in mutual learning). The T² factor keeps the
    gradient scale independent of T.
    """
    if divergence == "forward":  # the exact pre-divergence kd path: default runs are bit-identical
        log_p_student = F.log_softmax(student_logits / temperature, dim=1)
        p_teacher = F.softmax(teacher_logits / temperature, dim=1)
        return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    reverse = F.kl_div(log_p_t, log_p_s, reduction="batchmean", log_target=True) * temperature**2
    if divergence == "reverse":
        return reverse
    forward = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
    return (1 - mix) * forward + mix * reverse


def labeled_ce(student: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the labeled samples; 0 (still in the graph) when there are none."""
    labeled = labels != UNLABELED
    if bool(labeled.all()):  # the usual case, computed exactly as before unlabeled samples existed
        return F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    if not bool(labeled.any()):
        return student.sum() * 0.0  # not NaN (0/0), and backward still reaches every parameter
    return F.cross_entropy(student[labeled], labels[labeled], label_smoothing=label_smoothing)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0,
            divergence: Divergence = "forward", mix: float = 0.5) -> torch.Tensor:
    """Hinton et al. 2015: alpha·T²·D(p_T^τ, p_S^τ) + (1 − alpha)·CE(y, p_S), D = KL(p_T ‖ p_S) by default.

    The soft term uses every sample; the CE term the labeled ones only.
    """
    soft = soft_divergence(student, teacher, temperature, divergence, mix)
    hard = labeled_ce(student, labels, label_smoothing)
    return alpha * soft + (1 - alpha) * hard


def virtual_teacher_log_probs(labels: torch.Tensor, num_classes: int, a: float) -> torch.Tensor:
    """log p^d: probability `a` on the label, (1 − a)/(K − 1) on every other class (Yuan et al. 2020)."""
    out = torch.full((len(labels), num_classes), math.log((1 - a) / (num_classes - 1)))  # 0 < a < 1
    return out.scatter_(1, labels[:, None].cpu(), math.log(a))


def tfkd_loss(student: torch.Tensor, labels: torch.Tensor, a: float, temperature: float, alpha: float,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Teacher-free KD, Tf-KD_reg (Yuan et al., CVPR 2020): a hand-made "virtual teacher" that is
    right with probability `a` and spreads the rest uniformly;
    loss = (1 − alpha)·CE(y, p_S) + alpha·T²·KL(p^d_τ ‖ p_S^τ).

    p^d is softened as a teacher with logits log p^d would be (p^d_τ ∝ (p^d)^(1/τ)), so the
    KL's minimum is the student matching p^d itself at any τ. (The authors' released code
    instead applies softmax to the probabilities p^d / τ and leaves the student at τ = 1;
    at their τ = 20 that target is nearly uniform whatever `a` is.)
    Both parts need the label: unlabeled samples are left out of the whole term.
    """
    labeled = labels != UNLABELED
    if not bool(labeled.all()):
        if not bool(labeled.any()):
            return student.sum() * 0.0
        student, labels = student[labeled], labels[labeled]
    log_virtual = virtual_teacher_log_probs(labels, student.shape[1], a).to(student.device, student.dtype)
    soft = soft_divergence(student, log_virtual, temperature, "forward")
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    return alpha * soft + (1 - alpha) * hard


def _binary_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 − p_target] per row, (B, 2), without forming 1 − p (which underflows)."""
    log_all = torch.logsumexp(logits, dim=1)
    log_target = logits.gather(1, target[:, None]).squeeze(1) - log_all
    others = logits.masked_fill(F.one_hot(target, logits.shape[1]).bool(), float("-inf"))
    log_others = torch.logsumexp(others, dim=1) - log_all
    return torch.stack([log_target, log_others], dim=1)


def _non_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (B, K−1) logits with each row's target class removed."""
    keep = ~F.one_hot(target, logits.shape[1]).bool()
    return logits[keep].view(logits.shape[0], logits.shape[1] - 1)


def dkd_target(labels: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """DKD's target class: the label, or the teacher's top class for an unlabeled sample."""
    return torch.where(labels == UNLABELED, teacher.argmax(dim=1), labels)


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
             temperature: float, alpha: float, beta: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): KD split into
    TCKD = KL(b_T ‖ b_S) over the binary [target, all others] probabilities, and
    NCKD = KL(p̂_T ‖ p̂_S) over the distribution among the non-target classes;
    loss = (alpha·TCKD + beta·NCKD)·T². Classic KD weighs NCKD by (1 − p_T[target]),
    which hides it exactly where the teacher is confident; DKD frees its weight.
    Unlabeled samples take the teacher's top class as their target (`dkd_target`).
    """
    labels = dkd_target(labels, teacher)
    s, t = student / temperature, teacher / temperature
    log_b_s, log_b_t = _binary_log_probs(s, labels), _binary_log_probs(t, labels)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)
    log_q_s = F.log_softmax(_non_target(s, labels), dim=1)
    log_q_t = F.log_softmax(_non_target(t, labels), dim=1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


def ce_loss(student: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return labeled_ce(student, labels, label_smoothing)


def scheduled(start: float, end: float | None, progress: float, shape: Literal["linear", "cosine"]) -> float:
    """A value moved from `start` (progress 0) to `end` (progress 1); `end` None: constant.
    cosine eases in and out: (1 − cos πp)/2 of the way at progress p."""
    if end is None:
        return start
    p = min(1.0, max(0.0, progress))
    share = p if shape == "linear" else (1 - math.cos(math.pi * p)) / 2
    return start + (end - start) * share
