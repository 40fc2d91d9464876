"""Each loss family against a value computed by hand in numpy (loops and textbook
formulas, not the torch code). Tolerance: float32 vs float64, rel 1e-5."""

import numpy as np
import pytest
import torch

from edgekd.distill.feature import FitNets, at_loss, attention_map
from edgekd.distill.relation import rkd_angle, rkd_distance, rkd_loss
from edgekd.distill.response import dkd_loss
from edgekd.distill.taps import Pair

RNG = np.random.default_rng(0)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _huber(x):  # smooth L1 with beta 1, as torch's default
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def test_dkd_matches_hand_computed_value():
    s, t = RNG.normal(size=(3, 5)) * 2, RNG.normal(size=(3, 5)) * 2
    y, temp, alpha, beta = np.array([0, 3, 4]), 4.0, 1.0, 8.0
    total = 0.0
    for i in range(3):
        p_s, p_t = _softmax(s[i] / temp), _softmax(t[i] / temp)
        b_s = np.array([p_s[y[i]], 1 - p_s[y[i]]])  # target vs all other classes
        b_t = np.array([p_t[y[i]], 1 - p_t[y[i]]])
        others = [k for k in range(5) if k != y[i]]
        q_s, q_t = _softmax(s[i, others] / temp), _softmax(t[i, others] / temp)
        total += (alpha * _kl(b_t, b_s) + beta * _kl(q_t, q_s)) * temp**2
    expected = total / 3
    got = dkd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), torch.tensor(y),
                   temp, alpha, beta)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_is_kd_rebalanced():
    # With alpha = 1 and beta = 1 - p_t(target) per sample, TCKD + beta*NCKD equals classic KD
    # (Zhao et al., eq. 5); for a one-sample batch the identity is exact.
    s, t, y, temp = torch.randn(1, 6), torch.randn(1, 6), torch.tensor([2]), 2.0
    p_t = torch.softmax(t / temp, 1)[0, 2].item()
    kd = torch.nn.functional.kl_div(torch.log_softmax(s / temp, 1), torch.softmax(t / temp, 1),
                                    reduction="batchmean") * temp**2
    assert dkd_loss(s, t, y, temp, 1.0, 1 - p_t).item() == pytest.approx(kd.item(), rel=1e-5)


def test_attention_transfer_matches_hand_computed_value():
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 4, 4))  # channel counts differ
    expected = 0.0
    for b in range(2):
        q_s = (fs[b] ** 2).mean(0).ravel()
        q_t = (ft[b] ** 2).mean(0).ravel()
        diff = q_s / np.linalg.norm(q_s) - q_t / np.linalg.norm(q_t)
        expected += np.sum(diff**2)
    expected /= 2 * 16  # mean over batch and positions
    got = at_loss(torch.tensor(fs, dtype=torch.float32), torch.tensor(ft, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert attention_map(torch.tensor(fs)).norm(dim=1).numpy() == pytest.approx([1.0, 1.0])


def test_fitnets_hint_through_a_1x1_adapter_matches_hand_computed_value():
    fs, ft = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 4, 2, 2))
    w, bias = RNG.normal(size=(4, 3)), RNG.normal(size=4)
    adapted = np.einsum("oc,bchw->bohw", w, fs) + bias[None, :, None, None]
    expected = np.mean((adapted - ft) ** 2)
    hints = FitNets([Pair("s", "t", (3, 2, 2), (4, 2, 2)), Pair("s2", "t2", (4, 2, 2), (4, 2, 2))])
    assert isinstance(hints.adapters[1], torch.nn.Identity)  # equal channels: no adapter
    with torch.no_grad():
        hints.adapters[0].weight.copy_(torch.tensor(w[:, :, None, None]))
        hints.adapters[0].bias.copy_(torch.tensor(bias))
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = hints({"s": f32(fs), "s2": f32(ft)}, {"t": f32(ft), "t2": f32(ft)})  # 2nd pair: identical -> 0
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _distances(e):
    n = len(e)
    return np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])


def test_rkd_distance_matches_hand_computed_value():
    es, et = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 7))  # embedding sizes differ
    d_s, d_t = _distances(es), _distances(et)
    off = ~np.eye(5, dtype=bool)
    expected = _huber(d_s / d_s[off].mean() - d_t / d_t[off].mean()).mean()  # mean over all B*B entries
    got = rkd_distance(torch.tensor(es, dtype=torch.float32), torch.tensor(et, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _cosines(e):
    n, out = len(e), []
    for a in range(n):  # anchor a: angle between e_b - e_a and e_c - e_a (zero vector when b or c is a)
        for b in range(n):
            for c in range(n):
                u, v = e[b] - e[a], e[c] - e[a]
                nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                out.append(0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv))
    return np.array(out)


def test_rkd_angle_matches_hand_computed_value():
    es, et = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 6))
    expected = _huber(_cosines(es) - _cosines(et)).mean()
    got = rkd_angle(torch.tensor(es, dtype=torch.float32), torch.tensor(et, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    total = rkd_loss(torch.tensor(es), torch.tensor(et), distance_weight=25, angle_weight=50)
    assert total.item() == pytest.approx(25 * rkd_distance(torch.tensor(es), torch.tensor(et)).item() + 50 * expected,
                                         rel=1e-5)


def test_rkd_gradients_are_finite():
    es = torch.randn(6, 4, requires_grad=True)
    rkd_loss(es, torch.randn(6, 8), 25, 50).backward()
    assert torch.isfinite(es.grad).all()
