"""Tiny teachers and students for the transfer-image tests (CI size: 12-px inputs, a few steps)."""

import pytest
import torch

from edgekd.config import StudentConfig
from edgekd.models.io import build
from edgekd.models.student import student_spec

SHAPE = (1, 12, 12)
MEAN, STD = (0.3,), (0.25,)
CLASSES = 4


def tiny(arch: str, width: float, seed: int, in_chans: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(*student_spec(StudentConfig(width=width, depth=0.5), arch, {"num_classes": CLASSES,
                                                                               "in_chans": in_chans}))


def _with_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Non-default BN running statistics, as a trained teacher has: a few train-mode passes over
    structured inputs (class-dependent brightness)."""
    g = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(32, *SHAPE, generator=g) * 0.5 + torch.randint(0, 3, (32, 1, 1, 1), generator=g)
            model(x)
    return model.eval()


@pytest.fixture(scope="session")
def teacher_template():
    return _with_statistics(tiny("resnet18", 0.125, seed=0))


@pytest.fixture
def teacher(teacher_template):
    """A ResNet teacher with BatchNorm (a fresh copy per test: tests may not leave state behind)."""
    import copy

    return copy.deepcopy(teacher_template)


@pytest.fixture
def student():
    return tiny("resnet18", 0.125, seed=1)


@pytest.fixture
def convnext_teacher():
    """A ConvNeXt (LayerNorm, no BatchNorm) at CI size."""
    return tiny("convnext_atto", 0.2, seed=0).eval()


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here optimises images or trains: one intra-op thread (see tests/conftest.py)."""
    yield
