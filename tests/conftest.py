import os

import pytest

# Two cores shared by the suite: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """Tests never reach a model hub; a stray download attempt fails fast instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def single_thread():
    """One intra-op thread for tests that train: on the shared 2-core machine, two
    spinning OpenMP threads ran a small training 3-10x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
