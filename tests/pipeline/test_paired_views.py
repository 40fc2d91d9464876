"""data.augment crop / crop_flip with a student of its own input (issue #16 item 3): one shift and flip per row for
the teacher's and the student's view (edgekd.data.paired), the live teacher on its view of the student's rows, and
`edgekd compress` end to end (16-px RGB teacher, 8-px grey student, augmentation on). CI size."""

import json

import numpy as np
import pytest
import torch

from edgekd.config import CompressConfig
from edgekd.data.paired import PairedSplit, paired_shift
from edgekd.data.splitset import TensorSplit
from edgekd.errors import ConfigError, DataError
from edgekd.schema import parse
from edgekd.ui import UI


def _marked(n: int, side: int, channels: int) -> torch.Tensor:
    """n copies of one picture at `side` px: a block over rows 3/8..5/8 and columns 2/8..4/8 of the side, its left
    half twice as bright as its right (a flip shows)."""
    x = torch.zeros(n, channels, side, side)
    k = side // 8
    x[:, :, 3 * k : 5 * k, 2 * k : 3 * k] = 2.0
    x[:, :, 3 * k : 5 * k, 3 * k : 4 * k] = 1.0
    return x


def _flipped(x: torch.Tensor) -> torch.Tensor:
    """(n,) bool: the bright half lies right of the marker's centre (weighting by x^2 favours the bright half)."""
    return _relative_centre(x * x)[:, 1] > _relative_centre(x)[:, 1]


def _relative_centre(x: torch.Tensor) -> torch.Tensor:
    """(n, 2): the marker's centre of mass (row, column) as a fraction of the side, in pixel-centre coordinates."""
    mass = x.sum(1)  # over channels
    side = x.shape[-1]
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    total = mass.sum((1, 2))
    return torch.stack([(mass.sum(2) * coords).sum(1) / total, (mass.sum(1) * coords).sum(1) / total], 1)


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_one_geometry_puts_the_marker_at_the_same_place_in_both_views(augment):
    teacher, student = _marked(64, 16, 3), _marked(64, 8, 1)
    shifted_t, shifted_s = paired_shift([teacher, student], augment, torch.Generator().manual_seed(0))
    assert shifted_t.shape == (64, 3, 16, 16) and shifted_s.shape == (64, 1, 8, 8)
    where_t, where_s = _relative_centre(shifted_t), _relative_centre(shifted_s)
    torch.testing.assert_close(where_t, where_s, atol=1e-4, rtol=0)  # the same region of the sample in both
    assert len({tuple(r) for r in where_t.round(decimals=3).tolist()}) > 10  # rows drew different geometries
    flipped = _flipped(shifted_t)
    assert torch.equal(flipped, _flipped(shifted_s))  # the same flip in both
    assert flipped.any() == (augment == "crop_flip") and not flipped.all()
    # the larger view moves by whole pixels (to float rounding): its values stay 0, 1, 2, nothing blurred
    torch.testing.assert_close(shifted_t, shifted_t.round(), atol=1e-4, rtol=0)
    assert set(shifted_t.round().unique().tolist()) == {0.0, 1.0, 2.0}
    torch.testing.assert_close(shifted_t.sum((1, 2, 3)), torch.full((64,), 72.0))


def test_unpaired_draws_would_not_agree():
    """The check above can fail: two separate draws put the marker in different places."""
    teacher, student = _marked(64, 16, 3), _marked(64, 8, 1)
    t, _ = paired_shift([teacher, student], "crop", torch.Generator().manual_seed(0))
    _, s = paired_shift([teacher, student], "crop", torch.Generator().manual_seed(1))
    assert (_relative_centre(t) - _relative_centre(s)).abs().max() > 0.1


def test_the_paired_split_gives_the_teacher_its_view_of_the_batchs_rows():
    n = 40
    labels = torch.arange(n) % 4
    teacher_x = _marked(n, 16, 3) * torch.arange(1, n + 1).view(n, 1, 1, 1)  # row r: brightness 2 (r + 1)
    student_x = _marked(n, 8, 1) * torch.arange(1, n + 1).view(n, 1, 1, 1)
    paired = PairedSplit(TensorSplit(student_x, labels), TensorSplit(teacher_x, labels))
    assert len(paired) == n and np.array_equal(paired.labels, labels.numpy())
    batches = paired.batches(16, shuffle=True, seed=3, augment="crop_flip")
    seen = []
    for idx, x, y in batches.epoch(0):
        t = paired.teacher_view(idx)
        assert x.shape[1:] == (1, 8, 8) and t.shape[1:] == (3, 16, 16)
        torch.testing.assert_close(y, labels[idx])
        brightness = t.amax((1, 2, 3))  # the same rows, in the same order
        torch.testing.assert_close(brightness, 2 * (idx + 1).float())
        torch.testing.assert_close(_relative_centre(t), _relative_centre(x), atol=1e-4, rtol=0)
        assert torch.equal(_flipped(t), _flipped(x))
        seen.append(idx)
        with pytest.raises(DataError, match="not the student's current batch"):
            paired.teacher_view(idx.flip(0))
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
    again = next(iter(paired.batches(16, shuffle=True, seed=3, augment="crop_flip").epoch(0)))
    first = next(iter(batches.epoch(0)))
    torch.testing.assert_close(again[1], first[1])  # seeded per (seed, epoch): a resumed run sees the same views


def _raw(data=None, **sections):
    return {"data": {"kind": "digits", "input_size": 16, "channels": 3, **(data or {})},
            "teacher": {"model": "test_resnet"}, "student": {"width": 0.5, "input_size": 8, "channels": 1},
            **sections}


@pytest.mark.parametrize("augment", ["crop", "crop_flip"])
def test_shift_and_flip_augmentation_is_allowed_with_the_students_own_view(augment):
    assert parse(CompressConfig, _raw({"augment": augment}), "test").data.augment == augment


def test_timm_picture_augmentation_stays_refused_with_the_fix(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    raw = _raw({"kind": "imagefolder", "path": str(tmp_path / "images"), "augment": "timm"})
    with pytest.raises(ConfigError) as err:
        parse(CompressConfig, raw, "test")
    text = str(err.value)
    assert "gives the student its own view" in text and "data.augment 'timm'" in text
    assert "use data.augment: crop or crop_flip" in text


def test_erasing_stays_refused_with_the_students_own_view():
    """Mixing is paired now (tests/pipeline/test_paired_mixing.py); random erasing would draw a box per view."""
    raw = _raw({"augment": "crop_flip"},
               distill={"train": {"epochs": 1, "batch_size": 64, "augment": {"mixup": 0.2, "re_prob": 0.25}}})
    with pytest.raises(ConfigError, match="distill.train.augment.re_prob"):
        parse(CompressConfig, raw, "test")


CROSS_AUGMENTED = """
version: 1
name: cross-augmented
data: {kind: digits, input_size: 16, channels: 3, augment: crop}
teacher:
  model: test_resnet
  train: {epochs: 2, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student: {width: 0.5, depth: 1.0, input_size: 8, channels: 1}
distill:
  train: {epochs: 6, batch_size: 64, lr: 0.02, warmup_epochs: 0}
quantize:
  max_int8_drop: 0.5
targets: [host-cpu]
bench: {warmup_s: 0.01, min_iterations: 2, min_seconds: 0.01, batch_sizes: [1], rounds: 1}
"""


def test_compress_distils_with_paired_augmentation_and_a_live_teacher(tmp_path, monkeypatch):
    from edgekd.data import paired as paired_module
    from edgekd.pipeline.compress import compress

    calls = []
    original = paired_module.PairedSplit.teacher_view

    def recorded(self, idx):  # the real method, counted: the live teacher read its paired view every step
        out = original(self, idx)
        calls.append(tuple(out.shape[1:]))
        return out

    monkeypatch.setattr(paired_module.PairedSplit, "teacher_view", recorded)
    config = tmp_path / "cross.yaml"
    config.write_text(CROSS_AUGMENTED)
    run_dir = compress(config, out=tmp_path / "run", ui=UI(quiet=True)).run_dir
    record = json.loads((run_dir / ".edgekd/student.json").read_text())["result"]
    assert record["teacher_outputs"]["mode"] == "live"
    assert "shifted and flipped as the student's" in record["teacher_cache"]
    assert calls and set(calls) == {(3, 16, 16)}
    report = json.loads((run_dir / "report.json").read_text())
    rows = {a["name"]: a for a in report["artifacts"]}
    assert rows["student-fp32"]["accuracy"] > 0.5  # learned from the teacher through another input (chance 0.1; seen 0.72)
    assert "input teacher 3×16×16, student 1×8×8" in (run_dir / "report.md").read_text()
