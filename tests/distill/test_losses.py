import numpy as np
import pytest
import torch

from edgekd.config import KDConfig
from edgekd.distill.losses import build_loss, kd_loss


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_kd_matches_hand_computed_value():
    s, t, y, temp, alpha = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]), 0, 2.0, 0.5
    p_t, p_s = _softmax(t / temp), _softmax(s / temp)
    kl = float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))
    ce = float(-np.log(_softmax(s)[y]))
    expected = alpha * temp**2 * kl + (1 - alpha) * ce  # 0.5*4*0.3106... + 0.5*2.4076...
    got = kd_loss(torch.tensor(s[None]), torch.tensor(t[None]), torch.tensor([y]), temp, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kd_with_identical_logits_is_only_cross_entropy():
    z = torch.randn(4, 10)
    y = torch.randint(0, 10, (4,))
    got = kd_loss(z, z, y, temperature=4.0, alpha=0.7)
    ce = torch.nn.functional.cross_entropy(z, y)
    assert got.item() == pytest.approx(0.3 * ce.item(), rel=1e-5)


def test_losses_compose_by_weight():
    z, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    one = build_loss([KDConfig(weight=1.0)])(z, t, y)
    two = build_loss([KDConfig(weight=1.0), KDConfig(weight=0.5)])(z, t, y)
    assert two.item() == pytest.approx(1.5 * one.item(), rel=1e-6)
