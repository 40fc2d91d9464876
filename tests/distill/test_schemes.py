"""The multi-pass schemes without the pipeline: ensemble targets, chains, mutual learning."""

import pytest
import torch
import torch.nn.functional as F

from edgekd.config import TrainConfig
from edgekd.distill.schemes import EnsembleTeacher, mutual_loss, plan_chain, run_chain, train_peers
from tests.distill.test_trainer import _toy_data


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))


def test_one_teacher_ensemble_keeps_its_distribution_at_every_temperature():
    x = torch.randn(5, 1, 8, 8)
    teacher = _net(0).eval()
    ensemble = EnsembleTeacher([teacher], [3.0]).eval()
    with torch.no_grad():
        for t in (1.0, 4.0):
            torch.testing.assert_close(F.softmax(ensemble(x) / t, 1), F.softmax(teacher(x) / t, 1))


def test_ensemble_is_the_weighted_mean_of_probabilities():
    x = torch.randn(5, 1, 8, 8)
    a, b = _net(0).eval(), _net(1).eval()
    with torch.no_grad():
        mixed = EnsembleTeacher([a, b], [2.0, 1.0])(x).exp()
        expected = (2 * F.softmax(a(x), 1) + F.softmax(b(x), 1)) / 3
    torch.testing.assert_close(mixed, expected)


def test_mutual_loss_is_ce_plus_kl_to_the_other_peer_and_trains_each_peer_only_through_its_own_terms():
    z0 = torch.randn(4, 3, requires_grad=True)
    z1 = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    t = 2.0
    loss = mutual_loss([z0, z1], y, temperature=t)
    own0 = F.cross_entropy(z0, y) + t * t * F.kl_div(F.log_softmax(z0 / t, 1), F.softmax(z1.detach() / t, 1),
                                                     reduction="batchmean")
    own1 = F.cross_entropy(z1, y) + t * t * F.kl_div(F.log_softmax(z1 / t, 1), F.softmax(z0.detach() / t, 1),
                                                     reduction="batchmean")
    torch.testing.assert_close(loss, own0 + own1)
    loss.backward()
    grad0 = torch.autograd.grad(own0, z0)[0]
    torch.testing.assert_close(z0.grad, grad0)  # no gradient through peer 1's targets


def test_chain_plan_orders_assistants_student_generations():
    links = plan_chain(("s", {"w": 1}), [("a1", {}), ("a2", {})], generations=3, seed=7)
    assert [link.name for link in links] == ["assistant1", "assistant2", "student", "student.gen2", "student.gen3"]
    assert [link.seed for link in links] == [7, 7, 7, 8, 9]  # generations: same architecture, fresh weights
    assert plan_chain(("s", {}), [], 1, 0)[0].name == "student"  # no scheme: one link, as before


def test_each_link_is_taught_by_the_one_before(monkeypatch):
    from edgekd.distill import schemes

    monkeypatch.setattr(schemes, "build", lambda arch, kwargs: torch.nn.Linear(2, 2))
    seen = []
    teacher = torch.nn.Linear(2, 2)
    results = run_chain(teacher, plan_chain(("s", {}), [("a", {})], 2),
                        lambda link, student, t: (seen.append(t) or 0.5, {}))
    assert seen[0] is teacher and seen[1] is results[0].model and seen[2] is results[1].model


class Interrupt(Exception):
    pass


def test_peers_learn_and_resume_exactly(tmp_path):
    data = _toy_data()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.5, channels_last=False)
    straight = [_net(0), _net(1)]
    ref = train_peers(straight, data, data, cfg, tmp_path / "a", key="k", augment="crop")
    assert len(ref.best_states) == 2 and max(ref.best_accuracies) > 0.5  # chance: 1/3

    def stop_after_two(**_):
        stop_after_two.n = getattr(stop_after_two, "n", 0) + 1
        if stop_after_two.n == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_peers([_net(0), _net(1)], data, data, cfg, tmp_path / "b", key="k", augment="crop",
                    progress=stop_after_two)
    resumed_peers = [_net(5), _net(6)]  # weights come from last.pt
    resumed = train_peers(resumed_peers, data, data, cfg, tmp_path / "b", key="k", augment="crop")
    assert resumed.resumed_from_epoch == 2
    for a, b in zip(straight, resumed_peers):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(p, q, msg=name)
    assert resumed.best_accuracies == ref.best_accuracies
