"""distill.train.augment (mixup / CutMix, pad_crop, flips) and distill.recipe function_matching with a student of
its own input (issue #16 item 3): both views of a batch get one geometry per row and ONE mixing draw (the same
partner rows, the same lambda, the same CutMix box in relative coordinates), the live teacher its own mixed view.

The pictures are built so that the teacher's view (16-px RGB) downsized by 2 and averaged over channels IS the
student's (8-px grey): every paired shift, flip and mix keeps that, any unpaired draw breaks it. CI size."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import CompressConfig, TrainConfig
from edgekd.data.mixing import make_mixup, mix_batch, mix_views
from edgekd.data.paired import PairedSplit
from edgekd.data.seeding import derive_seed, fork_rngs
from edgekd.data.splitset import TensorSplit
from edgekd.data.transforms import TrainTransformConfig
from edgekd.distill.trainer import train
from edgekd.errors import ConfigError
from edgekd.schema import parse
from edgekd.ui import UI

CLASSES = 4
MIXES = {"mixup": {"mixup": 1.0}, "cutmix": {"cutmix": 1.0}, "both": {"mixup": 1.0, "cutmix": 1.0},
         "cutmix_minmax": {"cutmix_minmax": (0.3, 0.8)}}


def _pair(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher (n, 3, 16, 16), student (n, 1, 8, 8)): random 8-px pictures, the teacher's each pixel 2x2, RGB."""
    student = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    teacher = F.interpolate(student, scale_factor=2, mode="nearest").repeat(1, 3, 1, 1)
    return teacher, student


def _downsized(teacher: torch.Tensor) -> torch.Tensor:
    """The teacher's view as the student's: 2x2 mean, then the mean over channels."""
    return F.avg_pool2d(teacher, 2).mean(1, keepdim=True)


def _mixup(**keys):
    return make_mixup(TrainTransformConfig(**keys), CLASSES)


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_one_view_mixes_exactly_as_timm(mix):
    """The paired path is timm's batch-mode mix generalised, not another mix: with one view it is timm's own."""
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % CLASSES
    mixup = _mixup(**MIXES[mix])
    for step in range(6):
        with fork_rngs(step):
            expected, expected_targets = mixup(x.clone(), labels)
        with fork_rngs(step):
            (mixed,), targets = mix_views(mixup, [x.clone()], labels)
        assert torch.equal(mixed, expected) and torch.equal(targets, expected_targets)


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_both_views_get_the_same_partner_lambda_and_box(mix):
    teacher, student = _pair(16)
    labels = torch.arange(16) % CLASSES
    mixup = _mixup(**MIXES[mix])
    changed = 0
    for step in range(8):
        batch = mix_batch(mixup, student.clone(), labels, seed=5, epoch=0, step=step, partner=teacher.clone())
        assert batch.partner.shape == (16, 3, 16, 16)
        torch.testing.assert_close(_downsized(batch.partner), batch.inputs, atol=1e-6, rtol=0)
        # the targets carry the lambda the pixels were mixed with: the share of row i's own picture
        own = batch.targets[torch.arange(16), labels]
        partner = batch.targets[torch.arange(16), labels.flip(0)]
        assert torch.all((own + partner - 1).abs() < 1e-6) or torch.all(labels == labels.flip(0))
        changed += int(not torch.equal(batch.inputs, student))
    assert changed >= 4  # most steps mixed (mixup_prob 1; lambda 1 is possible only after CutMix's clip)


def test_two_separate_draws_would_not_agree():
    """The check above can fail: the teacher's view mixed by another step's draw no longer downsizes to the
    student's."""
    teacher, student = _pair(16)
    labels = torch.arange(16) % CLASSES
    mixup = _mixup(mixup=1.0, cutmix=1.0)
    s = mix_batch(mixup, student.clone(), labels, seed=5, epoch=0, step=0, partner=teacher.clone()).inputs
    t = mix_batch(mixup, student.clone(), labels, seed=5, epoch=0, step=1, partner=teacher.clone()).partner
    assert (_downsized(t) - s).abs().max() > 0.05


def test_per_row_mixing_modes_are_not_paired():
    teacher, student = _pair(4)
    with fork_rngs(derive_seed(0)), pytest.raises(ConfigError, match="mixup_mode: batch"):
        mix_views(_mixup(mixup=1.0, mixup_mode="elem"), [student, teacher], torch.arange(4))


class Recording(nn.Module):
    """A tiny classifier that keeps every training input it is called with."""

    def __init__(self, side: int, channels: int):
        super().__init__()
        self.num_classes = CLASSES  # as timm models carry it
        self.fc = nn.Linear(side * side * channels, CLASSES)
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("augment", [{"pad_crop": 4, "hflip": 0.5, "vflip": 0.5, "mixup": 1.0, "cutmix": 1.0},
                                     {"pad_crop": 2, "hflip": 0.5}])
def test_the_trainer_hands_the_teacher_its_view_in_the_students_geometry_and_mixing(tmp_path, augment):
    n = 40  # batch 16: 16 + 16 + 8 per epoch
    teacher_x, student_x = _pair(n, seed=2)
    labels = torch.arange(n) % CLASSES
    paired = PairedSplit(TensorSplit(student_x, labels), TensorSplit(teacher_x, labels))
    teacher_seen = []

    def teacher(idx, inputs):
        teacher_seen.append(inputs.detach().clone())
        return torch.zeros(len(inputs), CLASSES)

    def loss(student_logits, _teacher_logits, targets):
        targets = targets if targets.ndim == 2 else F.one_hot(targets, CLASSES).float()
        return -(targets * student_logits.log_softmax(1)).sum(1).mean()

    student = Recording(8, 1)
    cfg = TrainConfig(epochs=2, batch_size=16, channels_last=False, augment=augment)
    train(student, paired, (student_x[:8], labels[:8]), cfg, loss, tmp_path, key="k", seed=3, teacher=teacher)
    assert [len(s) for s in student.seen] == [16, 16, 8] * 2 == [len(t) for t in teacher_seen]
    moved = 0
    for s, t in zip(student.seen, teacher_seen):
        assert t.shape[1:] == (3, 16, 16)
        torch.testing.assert_close(_downsized(t), s, atol=1e-5, rtol=0)  # one geometry, one mix, both views
        moved += int((s - student_x[: len(s)]).abs().max() > 0)
    assert moved == len(student.seen)  # every batch was augmented


# ---------------------------------------------------------------- config and compress


def _raw(**distill):
    return {"data": {"kind": "digits", "input_size": 16, "channels": 3, "augment": "none"},
            "teacher": {"model": "test_resnet"}, "student": {"width": 0.5, "input_size": 8, "channels": 1},
            "distill": distill}


@pytest.mark.parametrize("distill", [{"recipe": "function_matching"},
                                     {"train": {"epochs": 1, "batch_size": 64, "augment": {"mixup": 0.2}}},
                                     {"train": {"epochs": 1, "batch_size": 64, "augment": {"pad_crop": 2}}}])
def test_mixing_and_function_matching_are_allowed_with_the_students_own_view(distill):
    config = parse(CompressConfig, _raw(**distill), "test")
    assert config.distill.train.augment is not None


@pytest.mark.parametrize("augment, named, fix", [
    ({"mixup": 0.2, "re_prob": 0.5}, "re_prob (random erasing)", "set distill.train.augment.re_prob: 0"),
    ({"mixup": 0.2, "mixup_mode": "pair"}, "mixup_mode 'pair' draws per row", "use mixup_mode: batch"),
])
def test_what_draws_per_view_or_per_row_stays_refused_with_the_fix(augment, named, fix):
    with pytest.raises(ConfigError) as err:
        parse(CompressConfig, _raw(train={"epochs": 1, "batch_size": 64, "augment": augment}), "test")
    text = str(err.value)
    assert "gives the student its own view" in text and named in text and fix in text


CROSS_MIXED = """
version: 1
name: cross-mixed
data: {kind: digits, input_size: 16, channels: 3}
teacher:
  model: test_resnet
  train: {epochs: 2, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student: {width: 0.5, depth: 1.0, input_size: 8, channels: 1}
distill:
  losses: [{kind: kd, alpha: 0.5, temperature: 2.0}]
  train: {epochs: 6, batch_size: 64, lr: 0.02, warmup_epochs: 0, augment: {pad_crop: 4, hflip: 0.5, mixup: 0.2}}
quantize:
  max_int8_drop: 0.5
targets: [host-cpu]
bench: {warmup_s: 0.01, min_iterations: 2, min_seconds: 0.01, batch_sizes: [1], rounds: 1}
"""


def test_compress_distils_with_paired_mixing_and_a_live_teacher(tmp_path, monkeypatch):
    from edgekd.data import mixing
    from edgekd.pipeline.compress import compress

    shapes = []
    original = mixing.mix_views

    def recorded(mixup, views, labels):  # the real function, watched: every step mixed both views together
        shapes.append(tuple(tuple(v.shape[1:]) for v in views))
        return original(mixup, views, labels)

    monkeypatch.setattr(mixing, "mix_views", recorded)
    config = tmp_path / "cross.yaml"
    config.write_text(CROSS_MIXED)
    run_dir = compress(config, out=tmp_path / "run", ui=UI(quiet=True)).run_dir
    record = json.loads((run_dir / ".edgekd/student.json").read_text())["result"]
    assert record["teacher_outputs"]["mode"] == "live"
    assert "its own view of the rows, in the same geometry and mixing" in record["teacher_cache"]
    assert shapes and set(shapes) == {((1, 8, 8), (3, 16, 16))}
    report = json.loads((run_dir / "report.json").read_text())
    rows = {a["name"]: a for a in report["artifacts"]}
    assert rows["student-fp32"]["accuracy"] > 0.5  # learned from the teacher through another input (chance 0.1)
    assert np.isfinite(record["val_accuracy"])
