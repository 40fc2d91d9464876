import pytest
import torch
from torch import nn

from edgekd.errors import ConfigError, ModelError
from edgekd.models.io import build
from edgekd.synth import generate_transfer_set, parse_settings
from edgekd.synth.deepinversion import (BNStatistics, DeepInversionSource, batch_generator, invert_batch, js_competition,
                                        lr_factor, require_batchnorm, total_variation)
from tests.synth.conftest import CLASSES, MEAN, SHAPE, STD, tiny

FAST = {"method": "deepinversion", "iterations": 12, "batch_size": 8, "lr": 0.25, "jitter": 0}


def test_bn_gap_is_zero_when_the_batch_has_the_running_statistics():
    bn = nn.BatchNorm2d(3).eval()
    x = torch.randn(16, 3, 5, 5) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 3
    bn.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    stats = BNStatistics([bn])
    bn(x)
    assert float(stats.loss()) == pytest.approx(0.0, abs=1e-5)
    bn(x + 1)  # every channel's mean off by exactly 1: ||(1, 1, 1)||_2
    assert float(stats.loss()) == pytest.approx(3 ** 0.5, rel=1e-5)
    stats.close()
    assert not bn._forward_hooks


def test_deepinversion_images_are_finite_and_lower_the_objective(teacher):
    settings = parse_settings(FAST)
    targets = torch.arange(8) % CLASSES
    x, losses = invert_batch(teacher, settings, targets, SHAPE, MEAN, STD, batch_generator(0, 0))
    assert x.shape == (8, *SHAPE) and torch.isfinite(x).all()
    first, last = losses["first"], losses["last"]  # no jitter: the same objective at both ends
    assert last["loss"] < 0.8 * first["loss"]
    assert last["bn"] < 0.8 * first["bn"]  # the BN-statistics gap, the dominant term here
    assert not any(p.grad is not None for p in teacher.parameters())  # the teacher is never trained
    assert all(p.requires_grad for p in teacher.parameters())  # and its flags are restored


def test_jitter_flip_and_clip_run_and_clip_keeps_pixels_valid(teacher):
    settings = parse_settings({**FAST, "jitter": 2, "flip": True, "clip": True, "lr_schedule": "cosine", "warmup": 3})
    x, _ = invert_batch(teacher, settings, torch.arange(8) % CLASSES, SHAPE, MEAN, STD, batch_generator(0, 1))
    pixels = x * STD[0] + MEAN[0]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_cosine_schedule_warms_up_then_decays():
    s = parse_settings({"method": "deepinversion_imagenet", "iterations": 200})
    assert lr_factor(s, 0) == pytest.approx(1 / 100) and lr_factor(s, 99) == pytest.approx(1.0)
    assert lr_factor(s, 150) == pytest.approx(0.5) and lr_factor(s, 199) < 0.01
    assert lr_factor(parse_settings(FAST), 7) == 1.0


def test_total_variation_is_zero_on_flat_images():
    flat = torch.full((2, 1, 4, 4), 0.7)
    assert all(float(t) == 0 for t in total_variation(flat))
    assert all(float(t) > 0 for t in total_variation(torch.randn(2, 1, 4, 4)))


def test_competition_term_is_one_when_models_agree_and_lower_when_they_disagree():
    logits = torch.tensor([[4.0, 0.0, 0.0]])
    assert float(js_competition(logits, logits, 3.0)) == pytest.approx(1.0)
    assert float(js_competition(logits, torch.tensor([[0.0, 0.0, 4.0]]), 3.0)) < 0.9


def test_adaptive_deepinversion_reads_the_student(teacher, student):
    settings = parse_settings({**FAST, "iterations": 3, "competition": 0.2})
    source = DeepInversionSource(teacher, settings, SHAPE, MEAN, STD, seed=0, student=student)
    x = source.next_batch(0)
    source.close()
    assert x.shape == (8, *SHAPE) and torch.isfinite(x).all() and source.uses_student
    with pytest.raises(ConfigError, match="needs the student"):
        DeepInversionSource(teacher, settings, SHAPE, MEAN, STD, seed=0)


def test_targets_take_classes_in_turn(teacher):
    source = DeepInversionSource(teacher, parse_settings({**FAST, "batch_size": 6}), SHAPE, MEAN, STD, seed=0)
    source.close()
    assert source.targets(0, batch_generator(0, 0)).tolist() == [0, 1, 2, 3, 0, 1]
    assert source.targets(1, batch_generator(0, 1)).tolist() == [2, 3, 0, 1, 2, 3]


def vit_teacher():
    torch.manual_seed(0)
    return build("vit_tiny_patch16_224", {"num_classes": CLASSES, "in_chans": 1, "img_size": 12, "patch_size": 4,
                                          "depth": 1, "embed_dim": 16, "num_heads": 2}).eval()


@pytest.mark.parametrize("make", [vit_teacher, lambda: tiny("convnext_atto", 0.2, seed=0)], ids=["vit", "convnext"])
def test_teachers_without_batchnorm_are_refused_with_the_adversarial_hint(make, tmp_path):
    teacher = make()
    with pytest.raises(ModelError) as err:
        require_batchnorm(teacher)
    assert "zskt" in err.value.hint and "BatchNorm" in err.value.message
    with pytest.raises(ModelError, match="BatchNorm"):
        generate_transfer_set(teacher, parse_settings(FAST), count=4, shape=SHAPE, mean=MEAN, std=STD,
                              cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written
