import os

import pytest

# Two cores shared by the suite: keep torch from oversubscribing them. Under pytest-xdist (addopts:
# two worker processes) each worker gets one thread: 2 x 2 spinning OpenMP threads on 2 cores ran
# small trainings several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")


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


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only=False) -> a fresh tmpfs folder (unmounted afterwards): a small disk to fill,
    or a read-only one. Needs root (CAP_SYS_ADMIN); the test is skipped, saying so, where mounting is refused."""
    import subprocess

    mounted = []

    def mount(size: str = "4m", read_only: bool = False):
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root with CAP_SYS_ADMIN")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
