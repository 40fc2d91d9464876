"""train.augment in the trainer (edgekd.distill.views.BatchViews; named apart from tests/synth/test_views.py,
which pytest would otherwise refuse to collect beside it): teacher and student receive the very same (mixed) tensor."""

import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.distill.trainer import train
from edgekd.data.datasets import transform_sample
from edgekd.distill.views import BatchViews

CLASSES = 4


class Recording(nn.Module):
    """A tiny classifier that keeps every training input it is called with."""

    def __init__(self):
        super().__init__()
        self.num_classes = CLASSES  # as timm models carry it
        self.fc = nn.Linear(64, CLASSES)
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _views_of(views: BatchViews, samples, idx, epoch: int) -> torch.Tensor:
    """The views training draws for samples[i], i in idx, in `epoch`: each seeded by (seed, i, epoch),
    whichever worker drew it (edgekd.data.datasets.transform_sample)."""
    return torch.stack([transform_sample(views.sample, samples[int(i)], True, (views.seed, int(i), epoch), None)
                        for i in idx])


def test_teacher_and_student_receive_the_identical_mixed_tensor(tmp_path, single_thread):
    x, y = _data()
    teacher_seen, labels_seen = [], []

    def teacher(idx, inputs):
        teacher_seen.append((idx.clone(), inputs.detach().clone()))
        return torch.zeros(len(inputs), CLASSES)

    def loss(student_logits, _teacher_logits, labels):
        labels_seen.append(labels)
        return -(labels * student_logits.log_softmax(1)).sum(1).mean()

    student = Recording()
    cfg = TrainConfig(epochs=2, batch_size=16, channels_last=False,
                      augment={"mixup": 1.0, "cutmix": 1.0, "re_prob": 0.5, "pad_crop": 2})
    train(student, (x, y), (x[:8], y[:8]), cfg, loss, tmp_path, key="k", seed=3, teacher=teacher)

    # 40 samples at batch 16: 16 + 16 + 8 per epoch, every batch even
    assert [len(s) for s in student.seen] == [16, 16, 8] * 2 == [len(t) for _, t in teacher_seen]
    views = BatchViews(cfg.augment, channels=1, input_size=8, num_classes=CLASSES, seed=3)
    for step, (seen, (idx, teacher_input), labels) in enumerate(zip(student.seen, teacher_seen, labels_seen)):
        assert torch.equal(seen, teacher_input)  # the very tensor, not two draws of the same recipe
        epoch, at = divmod(step, 3)
        expected, targets = views.mix(_views_of(views, x, idx, epoch), y[idx], epoch, at)
        assert torch.equal(seen, expected)  # reproducible from (seed, epoch, step) alone
        assert not torch.equal(seen, x[idx])  # and really augmented
        assert labels.shape == (len(idx), CLASSES) and torch.allclose(labels.sum(1), torch.ones(len(idx)))
        assert torch.equal(labels, targets)


def test_an_odd_last_batch_loses_one_sample_when_mixing(tmp_path, single_thread):
    x, y = _data(n=21)
    student = Recording()
    cfg = TrainConfig(epochs=1, batch_size=8, channels_last=False, augment={"mixup": 0.5})
    train(student, (x, y), (x[:8], y[:8]), cfg, lambda s, _t, lab: -(lab * s.log_softmax(1)).sum(1).mean(),
          tmp_path, key="k")
    assert [len(s) for s in student.seen] == [8, 8, 4]


def test_views_without_mixing_keep_integer_labels_and_the_teacher_sees_the_view(tmp_path, single_thread):
    x, y = _data(n=16)
    seen = []

    def teacher(_idx, inputs):
        seen.append(inputs.clone())
        return torch.zeros(len(inputs), CLASSES)

    student = Recording()
    cfg = TrainConfig(epochs=1, batch_size=16, channels_last=False, augment={"re_prob": 1.0})
    train(student, (x, y), (x[:8], y[:8]), cfg,
          lambda s, _t, lab: torch.nn.functional.cross_entropy(s, lab), tmp_path, key="k", teacher=teacher)
    assert torch.equal(seen[0], student.seen[0]) and not torch.equal(seen[0], x)


def test_streamed_imagefolder_batches_get_the_same_views_mixing_and_average(tmp_path, single_thread):
    """imagefolder (StreamSplit): views are drawn from the streamed, un-augmented batch; the teacher
    gets the student's very tensor; the weight average is scored on the streamed validation split."""
    import json

    import numpy as np
    from PIL import Image

    from edgekd.config import DataConfig
    from edgekd.data import load_data
    from edgekd.data.splitset import StreamSplit

    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = tmp_path / "images" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (10, 9, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = load_data(DataConfig(kind="imagefolder", path=tmp_path / "images", input_size=8, channels=3, workers=0,
                                augment="crop_flip"), cache_root=tmp_path / "cache")
    assert isinstance(data.train, StreamSplit)
    seen = []

    def teacher(idx, inputs):
        seen.append((idx.clone(), inputs.clone()))
        return torch.zeros(len(inputs), CLASSES)

    student = Recording()
    student.fc = nn.Linear(3 * 8 * 8, CLASSES)
    cfg = TrainConfig(epochs=2, batch_size=4, channels_last=False, ema=True,
                      augment={"mixup": 1.0, "re_prob": 0.5, "pad_crop": 2})
    train(student, data.train, data.val, cfg, lambda s, _t, lab: -(lab * s.log_softmax(1)).sum(1).mean(),
          tmp_path / "run", key="k", seed=5, teacher=teacher, augment="crop_flip")

    views = BatchViews(cfg.augment, channels=3, input_size=8, num_classes=CLASSES, seed=5)
    plain = {int(i): x for idx, x, _ in data.train.batches(64, shuffle=False).epoch() for i, x in zip(idx, x)}
    per_epoch = len(seen) // 2
    for step, (student_input, (idx, teacher_input)) in enumerate(zip(student.seen, seen)):
        assert torch.equal(student_input, teacher_input)
        epoch, at = divmod(step, per_epoch)
        labels = torch.as_tensor(data.train.labels[idx.numpy()])  # views of the eval transform's tensors
        expected, _ = views.mix(_views_of(views, plain, idx, epoch), labels, epoch, at)
        assert torch.equal(student_input, expected)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("val_accuracy_ema" in r and "data_wait" in r for r in rows)
