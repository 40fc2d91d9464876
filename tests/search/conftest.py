"""Tiny real candidates shared by the search tests: two derived ResNet-18 students at 32 px,
FP32 and INT8, exported once per session (TorchScript exporter: the fast one)."""

import warnings

import numpy as np
import pytest

from edgekd.bench.measure import BenchSettings
from edgekd.search.candidates import expand_grid, prepare_candidates
from edgekd.search.config import SearchConfig

QUICK = BenchSettings(warmup_s=0.02, min_iterations=5, min_seconds=0.02, batch_sizes=(1,), rounds=1)
TEACHER = {"teacher_arch": "resnet18", "teacher_kwargs": {"num_classes": 4, "in_chans": 3}}
GRID = SearchConfig(widths=[0.25, 0.5], depths=[0.5], input_sizes=[32], proxy_epochs=0)


def calibration(n: int = 8, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


def prepare(folder, search=GRID, precisions=("fp32", "int8")):
    candidates = expand_grid(search, "resnet18", list(precisions), 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        return prepare_candidates(candidates, folder=folder, calib_x=calibration(), opset=17, exporter="torchscript",
                                  **TEACHER)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Four real candidates (2 architectures x fp32/int8); read-only: copy a file before changing it."""
    return prepare(tmp_path_factory.mktemp("search") / "candidates")
