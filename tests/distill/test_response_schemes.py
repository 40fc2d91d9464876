"""Response-loss schemes against values computed by hand in numpy (textbook formulas, loops,
not the torch code): divergence choice, schedules, Tf-KD, and unlabeled (-1) samples."""

import math

import numpy as np
import pytest
import torch

from edgekd.config import CEConfig, DKDConfig, KDConfig, TfKDConfig
from edgekd.distill.losses import build_loss
from edgekd.distill.response import dkd_loss, kd_loss, labeled_ce, scheduled, soft_divergence, tfkd_loss

S = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
T = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 0.5]])


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


def _hand_divergence(s, t, temp, direction):
    total = 0.0
    for i in range(len(s)):
        p_s, p_t = _softmax(s[i] / temp), _softmax(t[i] / temp)
        total += _kl(p_t, p_s) if direction == "forward" else _kl(p_s, p_t)
    return temp**2 * total / len(s)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_forward_and_reverse_kl_match_hand_computed_values(direction):
    expected = _hand_divergence(S, T, 2.0, direction)
    assert soft_divergence(_t(S), _t(T), 2.0, direction).item() == pytest.approx(expected, rel=1e-5)


def test_one_sample_reverse_kl_by_hand():
    # s = [0, ln 3] -> p_s = [1/4, 3/4]; t = [0, 0] -> p_t = [1/2, 1/2]; T = 1
    # KL(p_s || p_t) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812...
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    got = soft_divergence(_t([[0.0, math.log(3)]]), _t([[0.0, 0.0]]), 1.0, "reverse")
    assert got.item() == pytest.approx(expected, rel=1e-6)
    forward = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)  # KL(p_t || p_s) = 0.143841...
    sym = soft_divergence(_t([[0.0, math.log(3)]]), _t([[0.0, 0.0]]), 1.0, "symmetric", mix=0.25)
    assert sym.item() == pytest.approx(0.75 * forward + 0.25 * expected, rel=1e-6)


def test_symmetric_mix_matches_hand_computed_value():
    fwd, rev = _hand_divergence(S, T, 3.0, "forward"), _hand_divergence(S, T, 3.0, "reverse")
    got = soft_divergence(_t(S), _t(T), 3.0, "symmetric", mix=0.3)
    assert got.item() == pytest.approx(0.7 * fwd + 0.3 * rev, rel=1e-5)


def test_kd_with_reverse_kl_keeps_t_squared_and_the_ce_share():
    y, temp, alpha = np.array([2, 0]), 4.0, 0.6
    ce = np.mean([-np.log(_softmax(S[i])[y[i]]) for i in range(2)])
    expected = alpha * _hand_divergence(S, T, temp, "reverse") + (1 - alpha) * ce
    got = kd_loss(_t(S), _t(T), torch.tensor(y), temp, alpha, divergence="reverse")
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_divergences_agree_where_the_distributions_do():
    z = torch.randn(4, 7)
    for direction in ("forward", "reverse", "symmetric"):
        assert soft_divergence(z, z.clone(), 4.0, direction).item() == pytest.approx(0.0, abs=1e-6)


def test_schedules_by_hand():
    assert scheduled(0.9, None, 0.7, "cosine") == 0.9  # no end: constant
    assert scheduled(0.9, 0.5, 0.0, "linear") == pytest.approx(0.9)
    assert scheduled(0.9, 0.5, 0.25, "linear") == pytest.approx(0.8)
    assert scheduled(8.0, 2.0, 1.0, "linear") == pytest.approx(2.0)
    # cosine: (1 - cos(pi p)) / 2 of the way; p = 1/3 -> (1 - 0.5) / 2 = 0.25
    assert scheduled(8.0, 2.0, 1 / 3, "cosine") == pytest.approx(8.0 - 6.0 * 0.25)
    assert scheduled(8.0, 2.0, 0.5, "cosine") == pytest.approx(5.0)


def test_objective_reads_the_progress_it_is_given():
    cfg = KDConfig(alpha=0.9, alpha_end=0.5, temperature=8.0, temperature_end=2.0)
    objective = build_loss([cfg])
    s, t, y = _t(S), _t(T), torch.tensor([2, 0])
    objective.set_progress(0.5)  # linear: alpha 0.7, T 5
    assert objective.scheduled_values() == {"kd[0].alpha": 0.7, "kd[0].temperature": 5.0}
    ce = np.mean([-np.log(_softmax(S[i])[[2, 0][i]]) for i in range(2)])
    expected = 0.7 * _hand_divergence(S, T, 5.0, "forward") + 0.3 * ce
    assert objective(s, t, y).item() == pytest.approx(expected, rel=1e-5)
    objective.hold_progress(1.0)
    objective.set_progress(0.1)  # ignored while held
    assert objective.scheduled_values()["kd[0].temperature"] == 2.0
    assert build_loss([KDConfig()]).scheduled_values() == {}  # nothing scheduled: nothing logged


def _hand_tfkd(s, y, a, temp, alpha):
    k, total = s.shape[1], 0.0
    for i in range(len(s)):
        virtual = np.full(k, (1 - a) / (k - 1))
        virtual[y[i]] = a
        soft_virtual = virtual ** (1 / temp) / np.sum(virtual ** (1 / temp))  # softened like a teacher at T
        kl = temp**2 * _kl(soft_virtual, _softmax(s[i] / temp))
        ce = -np.log(_softmax(s[i])[y[i]])
        total += alpha * kl + (1 - alpha) * ce
    return total / len(s)


def test_tfkd_matches_hand_computed_value():
    y = np.array([1, 2])
    expected = _hand_tfkd(S, y, a=0.8, temp=5.0, alpha=0.6)
    got = tfkd_loss(_t(S), torch.tensor(y), a=0.8, temperature=5.0, alpha=0.6)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_tfkd_at_temperature_one_is_cross_entropy_with_the_virtual_teacher():
    # T = 1, alpha = 1: KL(p^d || p_s); for K = 2, a = 0.75, s = [0, 0]:
    # 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.130812...
    got = tfkd_loss(_t([[0.0, 0.0]]), torch.tensor([0]), a=0.75, temperature=1.0, alpha=1.0)
    assert got.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)


def test_tfkd_needs_no_teacher_logits():
    assert build_loss([TfKDConfig(), KDConfig()]).needs_teacher
    teacher_free = build_loss([CEConfig(), TfKDConfig()])
    assert not teacher_free.needs_teacher
    assert torch.isfinite(teacher_free(_t(S), None, torch.tensor([0, 1])))


# ---- unlabeled samples (label -1)

Y_PART = np.array([2, -1])


def test_ce_averages_over_labeled_samples_only():
    expected = -np.log(_softmax(S[0])[2])  # the second sample has no label
    assert labeled_ce(_t(S), torch.tensor(Y_PART)).item() == pytest.approx(expected, rel=1e-6)


def test_an_all_unlabeled_batch_gives_zero_and_a_finite_gradient():
    s = _t(S).requires_grad_()
    for loss in (labeled_ce(s, torch.tensor([-1, -1])),
                 tfkd_loss(s, torch.tensor([-1, -1]), 0.9, 4.0, 0.5),
                 kd_loss(s, _t(T), torch.tensor([-1, -1]), 4.0, 0.0)):  # alpha 0: CE only
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(s.grad).all()


def test_kd_soft_term_uses_every_sample_and_ce_the_labeled_ones():
    temp, alpha = 2.0, 0.5
    expected = alpha * _hand_divergence(S, T, temp, "forward") + (1 - alpha) * -np.log(_softmax(S[0])[2])
    got = kd_loss(_t(S), _t(T), torch.tensor(Y_PART), temp, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_tfkd_leaves_unlabeled_samples_out():
    expected = _hand_tfkd(S[:1], [2], a=0.9, temp=4.0, alpha=0.5)
    got = tfkd_loss(_t(S), torch.tensor(Y_PART), a=0.9, temperature=4.0, alpha=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _hand_dkd(s, t, y, temp, alpha, beta):
    total = 0.0
    for i in range(len(s)):
        p_s, p_t = _softmax(s[i] / temp), _softmax(t[i] / temp)
        b_s, b_t = np.array([p_s[y[i]], 1 - p_s[y[i]]]), np.array([p_t[y[i]], 1 - p_t[y[i]]])
        others = [k for k in range(s.shape[1]) if k != y[i]]
        q_s, q_t = _softmax(s[i, others] / temp), _softmax(t[i, others] / temp)
        total += (alpha * _kl(b_t, b_s) + beta * _kl(q_t, q_s)) * temp**2
    return total / len(s)


def test_dkd_takes_the_teachers_top_class_for_an_unlabeled_sample():
    # sample 2's teacher logits [0, 1, 0.5] put class 1 on top: it stands in for the missing label
    expected = _hand_dkd(S, T, [2, 1], 4.0, 1.0, 8.0)
    got = dkd_loss(_t(S), _t(T), torch.tensor(Y_PART), 4.0, 1.0, 8.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert build_loss([DKDConfig()])(_t(S), _t(T), torch.tensor(Y_PART)).item() == pytest.approx(expected, rel=1e-5)
