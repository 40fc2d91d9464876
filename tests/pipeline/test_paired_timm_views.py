"""data.augment timm with a student of its own input (issue #16 item 3): one decoded picture, ONE timm crop, flips and
colour draw per sample, each model's tensor that crop at its own size and channels (PairedTrainTransform), wired into
the training batches (PairedSplit) so the student's and the teacher's batches are row for row the same crop. CI size."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgekd.config import CompressConfig
from edgekd.data import Preprocess
from edgekd.data import paired as paired_module
from edgekd.data.seeding import fork_rngs
from edgekd.data.transforms import ImageAugmentConfig, PairedTrainTransform, train_transform
from edgekd.errors import ConfigError
from edgekd.schema import parse

from tests.data.imagefolders import smooth_image

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # PIL's RGB -> L
TEACHER = Preprocess(input_size=16, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3)
STUDENT = Preprocess(input_size=8, channels=1, mean=(0.0,), std=(1.0,))


def _as_student(teacher: torch.Tensor, teacher_pre: Preprocess = TEACHER, student_pre: Preprocess = STUDENT):
    """Teacher tensors (N, 3, 16, 16) seen as the student's (N, 1, 8, 8): un-normalised, grey by luma, 2x2 mean,
    normalised as the student's."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (teacher_pre.mean, teacher_pre.std))
    grey = ((teacher * std + mean) * LUMA).sum(1, keepdim=True)
    return (F.avg_pool2d(grey, 2) - student_pre.mean[0]) / student_pre.std[0]


def _picture(seed: int) -> Image.Image:
    return Image.fromarray(smooth_image(np.random.default_rng(seed), 40, 30))


def _views(transform, picture, seed: int):
    with fork_rngs(seed):  # as SampleDataset seeds each sample's transform
        return transform(picture)


def test_both_views_are_the_same_crop_flip_and_colour():
    transform = PairedTrainTransform(ImageAugmentConfig(), TEACHER, STUDENT)  # timm's defaults: colour jitter 0.4
    crops = []
    for seed in range(12):
        student, teacher = _views(transform, _picture(seed % 3), seed)
        assert student.shape == (1, 8, 8) and teacher.shape == (3, 16, 16)
        torch.testing.assert_close(_as_student(teacher[None])[0], student, atol=0.06, rtol=0)  # PIL resize != 2x2 mean
        crops.append(teacher)
    assert len({round(float(c.sum()), 3) for c in crops}) == len(crops)  # every draw another crop


def test_separate_draws_would_not_agree():
    """The check above can fail: the student's view of another draw is another crop of the same picture."""
    transform = PairedTrainTransform(ImageAugmentConfig(scale=(0.08, 0.3)), TEACHER, STUDENT)
    worst = max((_as_student(_views(transform, _picture(0), seed)[1][None])[0]
                 - _views(transform, _picture(0), seed + 100)[0]).abs().max() for seed in range(6))
    assert worst > 0.2  # three times the tolerance above


def test_the_larger_views_tensor_is_timms_own_transform():
    """Generalised, not rewritten: the teacher's tensor is timm's training transform of the picture, same seed
    (ToTensor/Normalize to float rounding), and a student larger than the teacher takes timm's crop itself."""
    cfg = ImageAugmentConfig(auto_augment="rand-m9-mstd0.5")
    teacher_pre = Preprocess(input_size=16, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    timm_alone = train_transform(cfg, teacher_pre)
    for seed in range(4):
        _, teacher = _views(PairedTrainTransform(cfg, teacher_pre, STUDENT), _picture(seed), seed)
        torch.testing.assert_close(teacher, _views(timm_alone, _picture(seed), seed), atol=1e-5, rtol=0)
    big_student = Preprocess(input_size=24, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    student, _ = _views(PairedTrainTransform(cfg, teacher_pre, big_student), _picture(0), 7)
    torch.testing.assert_close(student, _views(train_transform(cfg, big_student), _picture(0), 7), atol=1e-5, rtol=0)


def _raw(tmp_path, **train_transform):
    (tmp_path / "images" / "a").mkdir(parents=True, exist_ok=True)
    return {"data": {"kind": "imagefolder", "path": str(tmp_path / "images"), "input_size": 16, "channels": 3,
                     "augment": "timm", **({"train_transform": train_transform} if train_transform else {})},
            "teacher": {"model": "test_resnet"}, "student": {"width": 0.5, "input_size": 8, "channels": 1}}


def test_timm_augmentation_is_allowed_with_the_students_own_view(tmp_path):
    assert parse(CompressConfig, _raw(tmp_path), "test").data.augment == "timm"


@pytest.mark.parametrize("change, named, fix", [
    ({"train_transform": {"re_prob": 0.25}}, "data.train_transform.re_prob", "re_prob: 0"),
    ({"student": {"width": 0.5, "input_size": 24, "channels": 1}}, "crops both views from the larger one",
     "give the larger view 3 channels"),
])
def test_what_timm_cannot_pair_stays_refused_with_the_fix(tmp_path, change, named, fix):
    raw = _raw(tmp_path, **change.get("train_transform", {}))
    raw["student"] = change.get("student", raw["student"])
    with pytest.raises(ConfigError) as err:
        parse(CompressConfig, raw, "test")
    text = str(err.value)
    assert "gives the student its own view" in text and named in text and fix in text


def _folder(root, per_class=8):
    """3 classes told apart by brightness (a student can learn them); mixed picture sizes."""
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(50 + 70 * c, 25, (20 + i % 4, 18, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


def test_training_batches_are_row_for_row_the_same_timm_crop(tmp_path, monkeypatch):
    from edgekd import BUILTIN_DIR
    from edgekd.pipeline.context import RunContext
    from edgekd.pipeline.engine import read_record, run_stages
    from edgekd.pipeline.train_stages import DATA, STUDENT, TEACHER
    from edgekd.ui import UI

    pairs = []
    original = paired_module.paired_shift

    def recorded(views, augment, generator):  # the real function, watched: the two views of each batch as drawn
        pairs.append([v.clone() for v in views])
        return original(views, augment, generator)

    monkeypatch.setattr(paired_module, "paired_shift", recorded)
    train = {"epochs": 1, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0}
    config = {"data": {"kind": "imagefolder", "path": str(_folder(tmp_path / "images")), "input_size": 16,
                       "channels": 3, "workers": 0, "augment": "timm", "train_transform": {"scale": [0.3, 1.0]}},
              "teacher": {"model": "test_resnet", "train": train},
              "student": {"width": 0.5, "input_size": 8, "channels": 1},
              "distill": {"losses": [{"kind": "kd", "alpha": 1.0, "temperature": 1.0}],
                          "train": {**train, "epochs": 2, "augment": {"pad_crop": 2, "hflip": 0.5, "mixup": 0.5}}},
              "targets": ["host-cpu"], "quantize": {"calibration": str(BUILTIN_DIR / "calib" / "digits.yaml")}}
    ctx = RunContext(parse(CompressConfig, config, "test"), tmp_path / "run", ui=UI(quiet=True))
    ctx.run_dir.mkdir()
    run_stages([DATA, TEACHER, STUDENT], ctx, UI(quiet=True))
    record = read_record(ctx.run_dir, "student")["result"]
    assert record["teacher_outputs"]["mode"] == "live"
    assert "its own view of the rows, in the same geometry and mixing" in record["teacher_cache"]
    assert len(pairs) >= 2
    for student, teacher in pairs:
        assert student.shape[1:] == (1, 8, 8) and teacher.shape[1:] == (3, 16, 16)
        expected = _as_student(teacher, ctx.data.preprocess, ctx.student_data.preprocess)
        # the same crop, flip and colour per row (PIL's 16 -> 8 resize is not exactly a 2x2 mean)
        assert (expected - student).abs().amax((1, 2, 3)).max() < 0.1 / ctx.student_data.preprocess.std[0]
    teacher_all = torch.cat([t for _, t in pairs])
    assert len({round(float(t.sum()), 2) for t in teacher_all}) == len(teacher_all)  # random crops, not eval views
    json.dumps(record)  # the record stays plain data
