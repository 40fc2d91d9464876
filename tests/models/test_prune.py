import pytest
import torch
from sklearn.datasets import load_digits

from edgekd.config import StudentConfig, TrainConfig
from edgekd.distill.losses import cross_entropy
from edgekd.distill.trainer import evaluate, train
from edgekd.errors import ConfigError
from edgekd.models.io import build
from edgekd.models.prune import evenly_spaced, init_from_teacher, top_channels
from edgekd.models.student import student_spec

BASE = {"num_classes": 10, "in_chans": 1}
# Small teachers of each prunable family (the 16-px digits need no more).
TEACHERS = {"ResNet": ("resnet18", {"channels": [32, 64, 128, 256]}, 16, 3),
            "ResNet-bottleneck": ("resnet50", {"channels": [16, 32, 64, 128]}, 16, 3),
            "ConvNeXt": ("convnext_atto", {"dims": [16, 32, 64, 128]}, 32, 3)}


def _randomise_norms(model):
    """Make BatchNorm statistics and layer scales non-trivial, so identity is a real check."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(getattr(m, "gamma", None), torch.nn.Parameter):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) + 0.5)


@pytest.mark.parametrize("family", list(TEACHERS))
def test_width_and_depth_one_reproduce_the_teacher(family):
    arch, extra, _, _ = TEACHERS[family]
    torch.manual_seed(0)
    teacher = build(arch, {**BASE, **extra}).eval()
    _randomise_norms(teacher)
    s_arch, s_kwargs = student_spec(StudentConfig(width=1, depth=1), arch, {**BASE, **extra})
    student = build(s_arch, s_kwargs).eval()
    init_from_teacher(student, teacher)
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=1e-5)


def test_narrow_resnet_gets_a_selection_shortcut_where_the_teacher_has_identity():
    # timm's 7x7 stem is always 64 wide: a width-0.5 resnet18 projects 64 -> 32 in layer1,
    # where the teacher adds its identity. That projection must pass 32 of the teacher's
    # stem channels through unchanged.
    torch.manual_seed(0)
    teacher = build("resnet18", BASE).eval()
    _randomise_norms(teacher)
    student = build(*student_spec(StudentConfig(width=0.5, depth=1), "resnet18", BASE)).eval()
    init_from_teacher(student, teacher)
    assert student.layer1[0].downsample is not None and teacher.layer1[0].downsample is None
    x = torch.randn(2, 1, 32, 32)
    stem = lambda m: m.maxpool(m.act1(m.bn1(m.conv1(x))))  # noqa: E731
    assert torch.equal(stem(student), stem(teacher))  # the stem is kept whole: 64 of 64
    weight = student.layer1[0].downsample[0].weight[:, :, 0, 0]
    assert weight.shape == (32, 64) and torch.equal(weight.sum(1), torch.ones(32))  # one channel picked per row
    picked = weight.argmax(1)
    assert torch.equal(picked, picked.sort().values) and len(picked.unique()) == 32
    torch.testing.assert_close(student.layer1[0].downsample(stem(student)), stem(teacher)[:, picked], rtol=0, atol=1e-6)


def _digits(size: int):
    d = load_digits()
    x = torch.nn.functional.interpolate(torch.tensor(d.images, dtype=torch.float32)[:, None] / 16, size=size) - 0.3
    y = torch.tensor(d.target)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


@pytest.mark.parametrize("family", ["ResNet", "ConvNeXt"])
def test_pruned_student_beats_chance_before_any_training(family, tmp_path, single_thread):
    arch, extra, size, epochs = TEACHERS[family]
    train_xy, val_xy = _digits(size)
    torch.manual_seed(0)
    teacher = build(arch, {**BASE, **extra})
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, warmup_epochs=0.5, channels_last=False)
    teacher.load_state_dict(train(teacher, train_xy, val_xy, cfg, cross_entropy(), tmp_path, key="t").best_state)
    assert evaluate(teacher, *val_xy) > 0.85
    student = build(*student_spec(StudentConfig(width=0.5, depth=0.5), arch, {**BASE, **extra}))
    random_accuracy = evaluate(student, *val_xy)
    init_from_teacher(student, teacher.eval(), calibration=train_xy[0][:512])
    # 10 classes: chance is 0.1. Measured: ResNet 0.47 (BatchNorm recalibrated), ConvNeXt 0.83.
    assert evaluate(student, *val_xy) > max(0.3, random_accuracy + 0.15)


def test_blocks_kept_are_evenly_spaced_and_channels_nested():
    assert evenly_spaced(6, 3) == [0, 2, 5] and evenly_spaced(2, 1) == [0] and evenly_spaced(4, 4) == [0, 1, 2, 3]
    importance = torch.tensor([0.5, 2.0, 2.0, 0.1, 3.0])
    assert top_channels(importance, 2).tolist() == [2, 4] or top_channels(importance, 2).tolist() == [1, 4]
    assert set(top_channels(importance, 2).tolist()) <= set(top_channels(importance, 3).tolist())


def test_unsupported_family_names_the_supported_ones():
    teacher = build("mobilenetv3_small_100", BASE)
    student = build(*student_spec(StudentConfig(), "mobilenetv3_small_100", BASE))
    with pytest.raises(ConfigError, match="Supported families: ResNet, ConvNeXt"):
        init_from_teacher(student, teacher)
