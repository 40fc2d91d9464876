import json
import math

import pytest
import torch

from edgekd.config import TrainConfig
from edgekd.distill.losses import cross_entropy
from edgekd.distill.trainer import augment_batch, train


def _toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[:, :, :, :] += y.view(n, 1, 1, 1).float()  # separable: mean brightness encodes the class
    return x, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))


CFG = TrainConfig(epochs=4, batch_size=16, lr=0.05, warmup_epochs=0.5, channels_last=False)


class Interrupt(Exception):
    pass


def test_interrupted_training_resumes_exactly(tmp_path):
    data = _toy_data()
    straight = _model()
    ref = train(straight, data, data, CFG, cross_entropy(), tmp_path / "a", key="k", augment="crop_flip")

    calls = {"n": 0}

    def stop_after_two(**_):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt

    interrupted = _model()
    try:
        train(interrupted, data, data, CFG, cross_entropy(), tmp_path / "b", key="k", augment="crop_flip",
              progress=stop_after_two)
    except Interrupt:
        pass
    resumed = _model()
    result = train(resumed, data, data, CFG, cross_entropy(), tmp_path / "b", key="k", augment="crop_flip")
    assert result.resumed_from_epoch == 2 and result.epochs_run == 4
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert result.best_accuracy == ref.best_accuracy


def test_a_different_key_starts_fresh(tmp_path):
    data = _toy_data()
    train(_model(), data, data, CFG.model_copy(update={"epochs": 1}), cross_entropy(), tmp_path, key="one")
    result = train(_model(), data, data, CFG.model_copy(update={"epochs": 1}), cross_entropy(), tmp_path, key="two")
    assert result.resumed_from_epoch == 0


def test_training_learns_and_keeps_the_best_epoch(tmp_path):
    data = _toy_data()
    longer = CFG.model_copy(update={"epochs": 15, "lr": 0.1})
    result = train(_model(), data, data, longer, cross_entropy(), tmp_path, key="k")
    assert result.best_accuracy > 0.9
    assert result.best_accuracy == max(h["val_accuracy"] for h in result.history)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 15


def test_augmentation_is_replayable_and_shape_preserving():
    x = torch.randn(5, 1, 8, 8)
    a = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1))
    b = augment_batch(x, "crop_flip", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


class _RecordingLoss:
    """Cross-entropy that records the progress values the trainer gives it."""

    def __init__(self):
        self.seen = []

    def set_progress(self, progress):
        self.seen.append(progress)

    def __call__(self, s, _t, y):
        return torch.nn.functional.cross_entropy(s, y)


def test_progress_is_the_share_of_optimizer_steps_done(tmp_path):
    loss = _RecordingLoss()
    cfg = CFG.model_copy(update={"epochs": 2})  # 96 samples / 16 = 6 steps per epoch, 12 in all
    train(_model(), _toy_data(), _toy_data(), cfg, loss, tmp_path, key="k")
    assert loss.seen == [step / 12 for step in range(12)]


def test_scheduled_kd_resumes_exactly_and_logs_its_values(tmp_path):
    from edgekd.config import KDConfig
    from edgekd.distill.losses import build_loss

    data = _toy_data()
    teacher = lambda _idx, x: x.mean(dim=(1, 2, 3))[:, None] * torch.tensor([[-1.0, 0.0, 1.0]])  # noqa: E731
    losses = [KDConfig(alpha=0.9, alpha_end=0.5, temperature=8.0, temperature_end=2.0, schedule="cosine",
                       divergence="symmetric")]
    straight = _model()
    train(straight, data, data, CFG, build_loss(losses), tmp_path / "a", key="k", teacher=teacher)

    calls = {"n": 0}

    def stop_after_two(**_):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt

    try:
        train(_model(), data, data, CFG, build_loss(losses), tmp_path / "b", key="k", teacher=teacher,
              progress=stop_after_two)
    except Interrupt:
        pass
    resumed = _model()
    result = train(resumed, data, data, CFG, build_loss(losses), tmp_path / "b", key="k", teacher=teacher)
    assert result.resumed_from_epoch == 2
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    # the values of each epoch's last step: progress 5/24, 11/24, 17/24, 23/24 along the cosine
    for row, step in zip(rows, (5, 11, 17, 23)):
        share = (1 - math.cos(math.pi * step / 24)) / 2
        assert row["kd[0].alpha"] == pytest.approx(0.9 - 0.4 * share, abs=1e-6)
        assert row["kd[0].temperature"] == pytest.approx(8.0 - 6.0 * share, abs=1e-6)
