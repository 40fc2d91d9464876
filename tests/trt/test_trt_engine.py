"""edgekd.trt.engine without a GPU: sidecar checks, statistics, val.npz handling.

Loading and timing real engines is in test_trt_gpu.py (marked `trt`).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from edgekd.errors import DataError, RuntimeBackendError
from edgekd.trt import engine
from edgekd.artifacts import sha256_file, sidecar_path
from edgekd.trt.build import SIDECAR_FORMAT

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
ORIN = {"name": "Orin", "compute_capability": "8.7", "multiprocessors": 8}


def write_engine(tmp_path, payload=b"plan-bytes", **overrides):
    path = tmp_path / "m.engine"
    path.write_bytes(payload)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "tensorrt": {"version": "10.3.0.30"},
        "gpu": dict(ORIN),
        "engine": {"sha256": sha256_file(path)},
        "precision": "fp16",
        **overrides,
    }
    sidecar_path(path).write_text(json.dumps(sidecar))
    return path


def test_engine_timings_use_the_one_summary():
    from edgekd.bench import stats

    assert engine.summarize is stats.summarize  # one definition: CPU rows and engines report the same keys


def test_same_device_is_compatible(tmp_path):
    sidecar = engine.engine_sidecar(write_engine(tmp_path))
    assert engine.compatibility_problems(sidecar, "10.3.0.30", dict(ORIN)) == []


@pytest.mark.parametrize(
    "version,gpu,fragment",
    [
        ("10.3.0.26", ORIN, "built with TensorRT 10.3.0.30, this device has 10.3.0.26"),
        ("10.3.0.30", {**ORIN, "multiprocessors": 16}, "SM count 8"),
        ("10.3.0.30", {**ORIN, "name": "Xavier", "compute_capability": "7.2"}, "compute capability '8.7'"),
    ],
)
def test_other_device_or_version_is_reported(tmp_path, version, gpu, fragment):
    sidecar = engine.engine_sidecar(write_engine(tmp_path))
    problems = engine.compatibility_problems(sidecar, version, gpu)
    assert any(fragment in p for p in problems), problems


def test_missing_engine_or_sidecar(tmp_path):
    with pytest.raises(RuntimeBackendError, match="does not exist"):
        engine.engine_sidecar(tmp_path / "none.engine")
    path = tmp_path / "orphan.engine"
    path.write_bytes(b"x")
    with pytest.raises(RuntimeBackendError, match="has no sidecar") as info:
        engine.engine_sidecar(path)
    assert "Rebuild on this device" in info.value.hint


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "something-else"}), "[1, 2]"])
def test_unreadable_sidecar(tmp_path, text):
    path = write_engine(tmp_path)
    sidecar_path(path).write_text(text)
    with pytest.raises(RuntimeBackendError):
        engine.engine_sidecar(path)


def write_val(tmp_path, x, y, name="val.npz"):
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return path


def test_load_val_roundtrip(tmp_path):
    x = np.zeros((5, 3, 8, 8), np.float32)
    y = np.arange(5, dtype=np.int32)
    got_x, got_y = engine.load_val(write_val(tmp_path, x, y))
    assert got_x.shape == (5, 3, 8, 8) and got_y.dtype == np.int64 and got_y.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "x,y,message",
    [
        (np.zeros((4, 3, 8, 8), np.float64), np.zeros(4, np.int64), "float32"),
        (np.zeros((4, 3, 8), np.float32), np.zeros(4, np.int64), r"\(N, C, H, W\)"),
        (np.zeros((4, 3, 8, 8), np.float32), np.zeros(3, np.int64), "4 integer labels"),
        (np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.float32), "integer labels"),
    ],
)
def test_load_val_refuses_bad_arrays(tmp_path, x, y, message):
    with pytest.raises(DataError, match=message):
        engine.load_val(write_val(tmp_path, x, y))


def test_load_val_missing_key_and_file(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, images=np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(DataError, match=r"lacks key\(s\) \['x', 'y'\]"):
        engine.load_val(path)
    with pytest.raises(DataError, match="does not exist"):
        engine.load_val(tmp_path / "absent.npz")


class NearestCentroid:
    """A real (if trivial) classifier with the runner interface: logits = -distance to class means."""

    def __init__(self, centroids):
        self.centroids = centroids

    def run(self, x):
        flat = x.reshape(len(x), -1)
        return -((flat[:, None, :] - self.centroids[None]) ** 2).sum(-1)


def test_evaluate_scores_top1(tmp_path):
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((3, 12)).astype(np.float32) * 5
    y = rng.integers(0, 3, size=40)
    x = (centroids[y] + 0.1 * rng.standard_normal((40, 12))).astype(np.float32).reshape(40, 3, 2, 2)
    y_wrong = y.copy()
    y_wrong[:10] = (y_wrong[:10] + 1) % 3
    runner = NearestCentroid(centroids)
    assert engine.evaluate(runner, write_val(tmp_path, x, y)) == {"samples": 40, "accuracy": 1.0}
    assert engine.evaluate(runner, write_val(tmp_path, x, y_wrong, "w.npz"))["accuracy"] == pytest.approx(
        0.75
    )


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the message when it is not")
def test_load_runner_without_tensorrt(tmp_path):
    with pytest.raises(RuntimeBackendError, match="tensorrt is not installed"):
        engine.load_runner(write_engine(tmp_path))
