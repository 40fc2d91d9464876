import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.synth import cache_key, generate_transfer_set, parse_settings
from edgekd.synth.deepinversion import DeepInversionSource
from edgekd.synth.tensors import from_uint8
from tests.synth.conftest import CLASSES, MEAN, SHAPE, STD

DI = {"method": "deepinversion", "iterations": 4, "batch_size": 8, "lr": 0.1}
ZSKT = {"method": "zskt", "rounds": 6, "batch_size": 8, "student_steps": 2, "generator_width": 32}


def run(teacher, settings, cache_dir, count=20, **kw):
    return generate_transfer_set(teacher, parse_settings(settings), count=count, shape=SHAPE, mean=MEAN, std=STD,
                                 cache_dir=cache_dir, **kw)


def stored(result) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, C, H, W) uint8, labels (N,)) of a transfer set, read record by record."""
    store = result.open()
    return np.stack([store.read(i) for i in range(len(store))]), store.labels


class Interrupted(Exception):
    pass


class StopAfter:
    """A UI whose progress bar raises after `batches` committed batches: an interruption at a batch boundary."""

    def __init__(self, batches: int):
        self.batches, self.messages = batches, []

    def info(self, message):
        self.messages.append(message)

    @contextmanager
    def progress(self, description, total):
        calls = {"n": 0}

        def advance(n=1, **fields):
            if fields or not self.messages:  # a batch (the resume catch-up call has no fields)
                calls["n"] += 1
                if calls["n"] >= self.batches:
                    raise Interrupted

        yield advance


def test_store_holds_the_images_and_the_teachers_labels_on_them(teacher, tmp_path):
    result = run(teacher, DI, tmp_path)
    images, labels = stored(result)
    assert images.shape == (20, *SHAPE) and labels.dtype == np.int64
    expected = teacher(from_uint8(images, MEAN, STD)).argmax(1).numpy()
    assert np.array_equal(labels, expected)
    index = result.open().index
    assert index["format"] == "edgekd.u8store/1" and index["count"] == 20 and index == result.index
    assert index["method"] == "deepinversion" and index["settings"]["iterations"] == 4
    assert index["key"] == result.key and index["mean"] == list(MEAN)
    assert index["label_counts"] == np.bincount(labels, minlength=CLASSES).tolist()  # every class, even unseen
    assert result.path.name == f"deepinversion-{result.key[:16]}" and not result.reused
    assert sorted(p.name for p in result.path.iterdir()) == ["images.u8", "index.json", "labels.npy"]


def test_same_key_reuses_the_store_and_generates_nothing(teacher, tmp_path, monkeypatch):
    first = run(teacher, DI, tmp_path)
    stamp = (first.path / "images.u8").stat().st_mtime_ns

    def no_generation(*_a, **_k):
        raise AssertionError("a cached transfer set was generated again")

    monkeypatch.setattr(DeepInversionSource, "next_batch", no_generation)
    again = run(teacher, DI, tmp_path)
    assert again.reused and again.path == first.path and again.key == first.key
    assert (first.path / "images.u8").stat().st_mtime_ns == stamp


def test_the_key_follows_every_input(teacher, student):
    settings = parse_settings(DI)
    base = dict(count=20, seed=0, shape=SHAPE, mean=MEAN, std=STD)
    key = cache_key(teacher, settings, **base)
    assert key == cache_key(teacher, settings, **base)
    changed = [cache_key(teacher, parse_settings({**DI, "iterations": 5}), **base),
               cache_key(teacher, settings, **{**base, "seed": 1}),
               cache_key(teacher, settings, **{**base, "count": 21}),
               cache_key(teacher, settings, **{**base, "shape": (1, 12, 13)}),
               cache_key(teacher, settings, **{**base, "std": (0.3,)}),
               cache_key(teacher, settings, **base, student=student)]
    with torch.no_grad():
        next(teacher.parameters()).add_(1e-3)
    changed.append(cache_key(teacher, settings, **base))
    assert len({key, *changed}) == len(changed) + 1


@pytest.mark.parametrize("settings", [DI, ZSKT], ids=["deepinversion", "zskt"])
def test_an_interrupted_generation_resumes_and_ends_with_the_same_images(settings, teacher, student, tmp_path):
    reference = stored(run(teacher, settings, tmp_path / "straight", student=student))

    with pytest.raises(Interrupted):
        run(teacher, settings, tmp_path / "cut", student=student, ui=StopAfter(batches=2))
    partial = next((tmp_path / "cut").glob("*.partial"))
    checkpoint = json.loads((partial / "state.json").read_text())
    assert checkpoint["records"] == 16 and checkpoint["batches"] == 2  # two batches committed
    states = sorted(p.name for p in partial.glob("state-*"))  # the generator's state of that batch alone
    assert states == (["state-000002.pt"] if settings["method"] == "zskt" else [])
    assert checkpoint["state"] == (states[0] if states else None)

    ui = StopAfter(batches=99)
    resumed = run(teacher, settings, tmp_path / "cut", student=student, ui=ui)
    assert resumed.resumed_from == 16 and any("resuming, 16 of 20" in m for m in ui.messages)
    images, labels = stored(resumed)
    assert np.array_equal(images, reference[0]) and np.array_equal(labels, reference[1])
    assert not list(resumed.path.glob("state*"))


KILLED_RUN = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.synth.conftest import MEAN, SHAPE, STD, tiny
from edgekd.synth import generate_transfer_set, parse_settings
torch.set_num_threads(1)
teacher = tiny("resnet18", 0.125, seed=0)
teacher.load_state_dict(torch.load({weights!r}))
teacher.eval()
generate_transfer_set(teacher, parse_settings({settings!r}), count=120, shape=SHAPE, mean=MEAN, std=STD,
                      cache_dir={cache!r})
"""


def test_a_killed_generation_process_resumes(teacher, tmp_path):
    """SIGKILL, not a polite exception: whatever was half-written is cut back on resume."""
    settings = {**DI, "iterations": 10}
    root = str(Path(__file__).resolve().parents[2])
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")  # the very same weights in the child
    script = KILLED_RUN.format(root=root, settings=settings, cache=str(tmp_path / "cut"),
                               weights=str(tmp_path / "teacher.pt"))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": root})
    deadline = time.monotonic() + 120
    progress = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "cut").glob("*.partial/state.json"))
        if found and json.loads(found[0].read_text())["records"] >= 8:
            progress = found[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progress is not None, "the child never committed a batch"
    done_before = json.loads(progress.read_text())["records"]
    assert 8 <= done_before < 120

    resumed = run(teacher, settings, tmp_path / "cut", count=120)
    assert resumed.resumed_from == done_before
    reference = stored(run(teacher, settings, tmp_path / "straight", count=120))
    assert np.array_equal(stored(resumed)[0], reference[0])


def test_bad_requests_are_refused(teacher, tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        run(teacher, DI, tmp_path, count=0)
    with pytest.raises(ConfigError, match="mean/std"):
        generate_transfer_set(teacher, parse_settings(DI), count=4, shape=SHAPE, mean=(0.5, 0.5, 0.5), std=STD,
                              cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="student"):
        run(teacher, ZSKT, tmp_path)
