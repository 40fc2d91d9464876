"""Response-based losses: they read the logits only, so cached teacher logits serve them.

Logits are (B, K); labels (B,). Every function returns a scalar averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al. 2015: alpha·T²·KL(p_T^τ ‖ p_S^τ) + (1 − alpha)·CE(y, p_S).

    The T² factor keeps the soft term's gradient scale independent of T.
    """
    log_p_student = F.log_softmax(student / temperature, dim=1)
    p_teacher = F.softmax(teacher / temperature, dim=1)
    soft = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2
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


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
             temperature: float, alpha: float, beta: float) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): KD split into
    TCKD = KL(b_T ‖ b_S) over the binary [target, all others] probabilities, and
    NCKD = KL(p̂_T ‖ p̂_S) over the distribution among the non-target classes;
    loss = (alpha·TCKD + beta·NCKD)·T². Classic KD weighs NCKD by (1 − p_T[target]),
    which hides it exactly where the teacher is confident; DKD frees its weight.
    """
    s, t = student / temperature, teacher / temperature
    log_b_s, log_b_t = _binary_log_probs(s, labels), _binary_log_probs(t, labels)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)
    log_q_s = F.log_softmax(_non_target(s, labels), dim=1)
    log_q_t = F.log_softmax(_non_target(t, labels), dim=1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


def ce_loss(student: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(student, labels, label_smoothing=label_smoothing)
