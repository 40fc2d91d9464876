"""The K-view teacher replay cache (edgekd.distill.replay) and worker-drawn views: a view is a function
of (seed, sample, epoch mod K) in any worker; replayed logits equal the live teacher's on the same
(mixed) tensor to fp16 rounding; within-epoch progress is shown."""

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.data.splitset import TensorSplit
from edgekd.data.transforms import TrainTransformConfig
from edgekd.distill.replay import ReplayTeacher
from edgekd.distill.trainer import train
from edgekd.distill.views import BatchViews

CLASSES = 4
# fp16 storage: relative rounding 2^-11 (~5e-4) on logits of magnitude ~1
FP16_RTOL, FP16_ATOL = 1e-3, 1e-3


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, CLASSES))
    net.num_classes = CLASSES  # as timm models carry it (mixup's one-hot targets)
    return net


def _views_by_sample(split: TensorSplit, views: BatchViews, epoch: int, k: int) -> dict[int, torch.Tensor]:
    batches = split.batches(5, shuffle=True, seed=7, transform=views.sample, views=k)
    return {int(i): v for idx, x, _ in batches.epoch(epoch) for i, v in zip(idx, x)}


def test_view_k_is_the_same_in_any_worker_and_every_k_epochs(single_thread):
    x, y = _data()
    views = BatchViews(TrainTransformConfig(re_prob=0.5, pad_crop=2), channels=1, input_size=8,
                       num_classes=CLASSES, seed=7)
    in_process = _views_by_sample(TensorSplit(x, y, workers=0), views, epoch=1, k=3)
    two_workers = TensorSplit(x, y, workers=2)
    assert sorted(in_process) == list(range(len(x)))
    for epoch in (1, 4):  # 4 mod 3 = 1: view 1 again, in another order
        drawn = _views_by_sample(two_workers, views, epoch=epoch, k=3)
        assert all(torch.equal(drawn[i], in_process[i]) for i in in_process)
    other = _views_by_sample(two_workers, views, epoch=2, k=3)
    assert sum(not torch.equal(other[i], in_process[i]) for i in in_process) > len(x) // 2


class _Watch:
    """The teacher function the trainer calls, wrapped: records (epoch, idx, inputs, logits) per step."""

    def __init__(self, replay: ReplayTeacher):
        self.replay, self.views, self.steps, self.epoch = replay, replay.views, [], 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.replay.set_epoch(epoch)

    def fill(self, inputs_of_view, autocast, **kwargs):
        self.replay.fill(inputs_of_view, autocast, **kwargs)

    def __call__(self, idx, inputs):
        logits = self.replay(idx, inputs)
        self.steps.append((self.epoch, idx.clone(), inputs.detach().clone(), logits))
        return logits


@pytest.mark.parametrize("augment", [{"re_prob": 0.5, "pad_crop": 2}, {"pad_crop": 2, "mixup": 1.0, "cutmix": 1.0}],
                         ids=["views", "views+mixup"])
def test_replayed_logits_equal_the_live_teacher_on_the_same_tensor(tmp_path, single_thread, augment):
    x, y = _data()
    teacher = _net(1).eval()
    replay = ReplayTeacher(teacher, tmp_path / "cache" / "t.npy", views=2, samples=len(x))
    watch = _Watch(replay)
    seen = []
    student = _net(2)
    student.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()) if _m.training else None)
    cfg = TrainConfig(epochs=3, batch_size=8, channels_last=False, augment=augment)

    def loss(s, t, labels):  # soft (mixed) or hard labels
        target = labels if labels.ndim == 2 else nn.functional.one_hot(labels, CLASSES).float()
        return -(target * s.log_softmax(1)).sum(1).mean() + (s - t).pow(2).mean()

    train(student, TensorSplit(x, y, workers=0), (x[:8], y[:8]), cfg, loss, tmp_path / "run", key="k",
          seed=3, teacher=watch)
    assert replay.complete and replay.build_seconds is not None
    assert np.load(replay.path, mmap_mode="r").shape == (2, len(x), CLASSES)
    with torch.no_grad():
        for (epoch, idx, inputs, logits), student_input in zip(watch.steps, seen, strict=True):
            assert torch.equal(inputs, student_input)  # one tensor for teacher and student (mixed too)
            torch.testing.assert_close(logits, teacher(inputs), rtol=FP16_RTOL, atol=FP16_ATOL)
    per_epoch = len(watch.steps) // 3
    if "mixup" in augment:  # epoch 2 replays epoch 0 whole: order, views, pairs and lambdas
        for (_, i0, x0, _), (_, i2, x2, _) in zip(watch.steps[:per_epoch], watch.steps[2 * per_epoch:]):
            assert torch.equal(i0, i2) and torch.equal(x0, x2)
    else:  # fresh order each epoch, the same view of each sample every 2 epochs
        first = {int(i): v for _, idx, inputs, _ in watch.steps[:per_epoch] for i, v in zip(idx, inputs)}
        third = {int(i): v for _, idx, inputs, _ in watch.steps[2 * per_epoch:] for i, v in zip(idx, inputs)}
        assert all(torch.equal(first[i], third[i]) for i in first)
        assert [int(i) for _, idx, *_ in watch.steps[:per_epoch] for i in idx] != \
            [int(i) for _, idx, *_ in watch.steps[2 * per_epoch:] for i in idx]


def test_a_complete_cache_is_replayed_without_running_the_teacher(tmp_path, single_thread):
    x, y = _data()
    path = tmp_path / "t.npy"
    cfg = TrainConfig(epochs=1, batch_size=8, channels_last=False, augment={"pad_crop": 2})
    kwargs = dict(key="k", seed=3)
    train(_net(2), (x, y), (x, y), cfg, lambda s, t, lab: (s - t).pow(2).mean(), tmp_path / "a",
          teacher=ReplayTeacher(_net(1).eval(), path, views=2, samples=len(x)), **kwargs)

    class Refuses(nn.Module):
        def forward(self, _x):
            raise AssertionError("the teacher ran")

    again = ReplayTeacher(Refuses(), path, views=2, samples=len(x))
    train(_net(2), (x, y), (x, y), cfg, lambda s, t, lab: (s - t).pow(2).mean(), tmp_path / "b", teacher=again,
          **kwargs)
    assert again.summary()["reused"] and again.note().startswith("replay: teacher logits of 2 fixed views")


def test_each_epoch_shows_images_done_rate_and_eta(tmp_path, single_thread, capsys):
    from edgekd.ui import UI

    x, y = _data()
    ui = UI()
    cfg = TrainConfig(epochs=2, batch_size=8, channels_last=False)
    train(_net(2), (x, y), (x, y), cfg, lambda s, _t, lab: nn.functional.cross_entropy(s, lab), tmp_path, key="k",
          step_progress=lambda epoch, images: ui.progress(f"student epoch {epoch + 1}/2", images, unit="images"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "student epoch" in line]
    assert len(lines) == 2 and all("24/24" in line and "images/s, ETA 0:00:00" in line for line in lines)


# ---------------------------------------------------------------- top-k storage (distill.replay_topk)


def _filled(tmp_path, top_k, classes=CLASSES, n=24, name="t"):
    """A ReplayTeacher of `top_k` filled with known logits (2 views of n samples), and those logits."""
    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(2, n, classes, generator=g) * 3

    class Table(nn.Module):  # the "teacher": logits of the current view, looked up by the input's sample number
        view = 0

        def forward(self, x):
            return logits[self.view, x[:, 0].long()]

    table = Table()
    replay = ReplayTeacher(table, tmp_path / f"{name}.npy", views=2, samples=n, top_k=top_k)

    def inputs_of_view(view):
        table.view = view
        order = torch.randperm(n, generator=torch.Generator().manual_seed(view))
        for idx in order.split(5):
            yield idx, idx.float().view(-1, 1)

    replay.fill(inputs_of_view, _no_autocast)
    return replay, logits


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


def _replayed(replay, view, n):
    replay.set_epoch(view)
    return replay(torch.arange(n), None)


def test_top_k_equal_to_the_class_count_replays_every_logit_exactly(tmp_path):
    replay, logits = _filled(tmp_path, top_k=CLASSES)
    for view in (0, 1):
        torch.testing.assert_close(_replayed(replay, view, 24), logits[view], rtol=FP16_RTOL, atol=FP16_ATOL * 8)
    full, _ = _filled(tmp_path, top_k=None, name="full")
    torch.testing.assert_close(_replayed(replay, 1, 24), _replayed(full, 1, 24), rtol=0, atol=0)  # both fp16 logits


@pytest.mark.parametrize("k", [1, 3, 10])
def test_small_top_k_keeps_the_top_probabilities_and_bounds_the_rest(tmp_path, k):
    classes = 40
    replay, logits = _filled(tmp_path, top_k=k, classes=classes)
    for view in (0, 1):
        true = logits[view].softmax(1)
        approx = _replayed(replay, view, 24).softmax(1)
        top = true.topk(k, dim=1).indices
        # the k largest probabilities survive (to fp16 rounding of their logits) ...
        torch.testing.assert_close(approx.gather(1, top), true.gather(1, top), rtol=5e-3, atol=1e-4)
        rest = 1 - true.gather(1, top).sum(1)
        # ... the other classes share the remaining mass evenly (FKD's marginal smoothing) ...
        others = approx.scatter(1, top, 0.0)
        torch.testing.assert_close(others.sum(1), rest, rtol=5e-3, atol=1e-4)
        even = others.sum(1) / (classes - k)
        assert torch.all((others.max(1).values - even).abs() <= 1e-4 + 5e-3 * even)
        # ... so the distributions differ by at most that mass (total variation), itself <= (C - k) / C
        total_variation = 0.5 * (approx - true).abs().sum(1)
        assert torch.all(total_variation <= rest + 1e-3) and torch.all(rest <= (classes - k) / classes + 1e-6)
    assert replay.summary()["disk_bytes"] < (2 * 24 * (4 * k + 2)) + 256  # 4k + 2 bytes per row, plus the header


def test_the_cache_names_its_rows_k_and_rejects_k_past_the_class_count(tmp_path):
    replay, _ = _filled(tmp_path, top_k=3)
    s = replay.summary()
    assert s["storage"] == "top-3" and s["shape"] == [2, 24] and "int16 classes" in s["dtype"]
    assert "top-3 of 4 classes" in replay.note()
    with pytest.raises(Exception, match="replay_topk 9 is more than the teacher's 4 classes"):
        _filled(tmp_path, top_k=9, name="too-many")


def test_an_empty_split_is_a_clear_error(tmp_path):
    from edgekd.errors import DataError

    replay = ReplayTeacher(_net(1).eval(), tmp_path / "t.npy", views=2, samples=0)
    with pytest.raises(DataError, match="no training samples"):
        replay.fill(lambda view: iter(()), _no_autocast)
    assert not replay.complete and not list(tmp_path.iterdir())  # nothing half-written


def test_no_step_reaching_the_cache_is_a_clear_error(tmp_path):
    from edgekd.errors import DataError

    replay = ReplayTeacher(_net(1).eval(), tmp_path / "t.npy", views=2, samples=3)
    with pytest.raises(DataError, match="No training step reached the teacher replay cache"):
        replay.fill(lambda view: iter(()), _no_autocast)  # e.g. mixup with batch_size 1: every batch dropped
    assert not replay.complete
