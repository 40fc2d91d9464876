import math

import pytest
import torch

from edgekd.errors import ConfigError, ModelError
from edgekd.synth import parse_settings
from edgekd.synth.adversarial import AdversarialSource, Generator, class_balance, mean_kl
from tests.synth.conftest import CLASSES, SHAPE
from tests.synth.test_deepinversion import vit_teacher

ZSKT = {"method": "zskt", "rounds": 10, "batch_size": 16, "student_steps": 2, "generator_width": 32}
DAFL = {"method": "dafl", "rounds": 10, "batch_size": 16, "generator_lr": 0.02, "generator_width": 32}  # (0.2, the MNIST recipe, jumps about at first)


@pytest.mark.parametrize("shape", [(1, 12, 12), (3, 10, 14)])
def test_generator_gives_normalised_images_of_any_size(shape):
    torch.manual_seed(0)
    x = Generator(8, shape, tanh=True, width=16)(torch.randn(6, 8))
    assert x.shape == (6, *shape) and torch.isfinite(x).all()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # final non-affine BN: per-channel standardised
    assert x.var(dim=(0, 2, 3), unbiased=False).sub(1).abs().max() < 1e-2


def test_class_balance_is_lowest_for_a_uniform_batch_prediction():
    uniform = torch.eye(CLASSES) * 20  # every class once, confidently
    one_class = torch.zeros(CLASSES, CLASSES)
    one_class[:, 0] = 20
    assert float(class_balance(uniform)) == pytest.approx(-math.log10(CLASSES), rel=1e-4)
    assert float(class_balance(one_class)) == pytest.approx(0.0, abs=1e-6)


def test_mean_kl_is_zero_for_equal_logits_and_averages_over_classes():
    a, b = torch.randn(5, CLASSES), torch.randn(5, CLASSES)
    assert float(mean_kl(a, a, 1.0)) == pytest.approx(0.0, abs=1e-6)
    batchmean = torch.nn.functional.kl_div(a.log_softmax(1), b.softmax(1), reduction="batchmean")
    assert float(mean_kl(a, b, 1.0)) == pytest.approx(float(batchmean) / CLASSES, rel=1e-5)


def _fixed_z(source, n=16):
    return torch.randn((n, source.settings.z_dim), generator=torch.Generator().manual_seed(7))


def _generator_loss(source, z):
    source.teacher.eval()
    with torch.no_grad():
        return source.generator_loss(source.generator(z))[1]["g_loss"]


@pytest.mark.parametrize("method", [ZSKT, DAFL], ids=["zskt", "dafl"])
def test_generator_steps_lower_the_generator_objective(method, teacher, student):
    source = AdversarialSource(teacher, parse_settings(method), SHAPE, seed=0, count=32, student=student)
    z = _fixed_z(source)
    steps = [source.generator_step(z)["g_loss"] for _ in range(8)]  # the student is fixed meanwhile
    after = _generator_loss(source, z)
    source.close()
    assert after < steps[0]


def test_zskt_student_steps_lower_the_student_loss_and_keep_the_callers_student(teacher, student):
    original = {k: v.clone() for k, v in student.state_dict().items()}
    source = AdversarialSource(teacher, parse_settings({**ZSKT, "student_steps": 6}), SHAPE, seed=0, count=32,
                               student=student)
    assert "pairs" in source.taps  # ZSKT's attention transfer between matched stages
    losses = []
    original_step = source._step

    def record(optimizer, model, loss):
        if model is source.student:
            losses.append(float(loss.detach()))
        original_step(optimizer, model, loss)

    source._step = record
    source.train_round()
    source.close()
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert all(torch.equal(v, original[k]) for k, v in student.state_dict().items())  # a private copy trained


def test_zskt_needs_a_student_and_dafl_does_not(teacher):
    with pytest.raises(ConfigError, match="student"):
        AdversarialSource(teacher, parse_settings(ZSKT), SHAPE, seed=0, count=32)
    source = AdversarialSource(teacher, parse_settings(DAFL), SHAPE, seed=0, count=32)
    x = source.next_batch(0)
    source.close()
    assert source.student is None and x.shape == (16, *SHAPE) and torch.isfinite(x).all()


def test_batches_are_drawn_at_evenly_spaced_rounds(teacher):
    source = AdversarialSource(teacher, parse_settings({**DAFL, "rounds": 9}), SHAPE, seed=0, count=40)  # 3 batches
    assert [source.emit_round(k) for k in range(3)] == [3, 6, 9]
    source.next_batch(0)
    assert source.round == 3
    source.close()


def test_a_teacher_without_batchnorm_gets_the_adversarial_method(student):
    teacher = vit_teacher()
    source = AdversarialSource(teacher, parse_settings(ZSKT | {"attention": 0}), SHAPE, seed=0, count=16,
                               student=student)
    x = source.next_batch(0)
    source.close()
    assert x.shape == (16, *SHAPE) and torch.isfinite(x).all() and source.round == 10
    with pytest.raises(ModelError, match="BatchNorm"):  # except the optional BN-statistics prior
        AdversarialSource(teacher, parse_settings({**DAFL, "bn": 1.0}), SHAPE, seed=0, count=16)
