"""measure_artifacts against real ONNX Runtime / PyTorch workers on tiny models."""

import numpy as np
import onnx
import pytest

from edgekd.bench.measure import ArtifactToMeasure, BenchSettings, Measurement, measure_artifacts, measurement_steps
from edgekd.bench.stats import STAT_KEYS
from edgekd.errors import ConfigError, RuntimeBackendError
from edgekd.runtime.ort import accuracy, make_session, predict
from edgekd.targets import load_target
from tests.bench.conftest import QUICK
from tests.bench.fakerun import SHAPE


@pytest.fixture(scope="module")
def measured(fake_run):
    arts = [
        ArtifactToMeasure("teacher-pytorch", "pytorch", fake_run / "teacher.safetensors"),
        ArtifactToMeasure("teacher-fp32", "onnxruntime", fake_run / "teacher.onnx"),
        ArtifactToMeasure("student-int8", "onnxruntime", fake_run / "student.int8.onnx"),
    ]
    steps = []
    measured = measure_artifacts(arts, SHAPE, load_target("host-cpu"), BenchSettings(**QUICK),
                                 data=fake_run / "data" / "val.npz", progress=lambda n=1: steps.append(n))
    assert sum(steps) == measurement_steps(len(arts), BenchSettings(**QUICK), data=True)  # the bar ends full
    return measured


def test_every_artifact_has_full_numbers(measured):
    assert list(measured) == ["teacher-pytorch", "teacher-fp32", "student-int8"]
    for m in measured.values():
        assert isinstance(m, Measurement)
        assert set(m.latency_ms) == set(STAT_KEYS)
        assert 0 < m.latency_ms["min"] <= m.latency_ms["p50"] <= m.latency_ms["p99"] <= m.latency_ms["max"]
        assert set(m.batch_sweep) == {"1", "4"}
        for b, entry in m.batch_sweep.items():
            # min_iterations is a floor over all rounds; one p50 per round is kept to show drift.
            assert entry["iterations"] >= QUICK["min_iterations"]
            assert len(entry["round_p50_ms"]) == QUICK["rounds"]
            assert entry["throughput_ips"] == pytest.approx(int(b) * 1000 / entry["latency_ms"]["mean"])
        assert len(m.latency_samples_ms) == m.batch_sweep["1"]["iterations"]
        assert m.batch_size == 1 and m.threads == 1
        assert m.throughput_ips == max(e["throughput_ips"] for e in m.batch_sweep.values())
        assert m.load_s > 0
        assert m.memory_method.endswith("(exact)")  # Linux with a writable clear_refs
        # A 0.4M-parameter model adds some MB over the post-import baseline, not hundreds.
        assert 0 < m.peak_rss_mb < 300
        assert m.batch_sweep["4"]["peak_rss_mb"] >= m.peak_rss_mb  # measured later, cumulative peak


def test_accuracy_matches_direct_computation(measured, fake_run):
    with np.load(fake_run / "data" / "val.npz") as npz:
        x, y = npz["x"], npz["y"]
    # Labels are the teacher's own predictions: eager PyTorch must score exactly 1.
    assert measured["teacher-pytorch"].accuracy == 1.0
    for name, file in [("teacher-fp32", "teacher.onnx"), ("student-int8", "student.int8.onnx")]:
        expected = accuracy(predict(make_session(fake_run / file, threads=1), x), y)
        # Same runtime, same data, different batching: allow one sample in 24 to flip on a near-tie.
        assert measured[name].accuracy == pytest.approx(expected, abs=1 / len(y) + 1e-9)
        assert measured[name].accuracy_samples == len(y)


def test_report_fields_follow_the_report_schema(measured):
    fields = measured["student-int8"].report_fields()
    for key in ("latency_ms", "throughput_ips", "peak_rss_mb", "load_s", "batch_sweep", "latency_samples_ms", "accuracy"):
        assert key in fields
    assert fields["bench"]["memory_method"]


def test_static_batch_artifact_skips_other_batch_sizes(fake_run, tmp_path):
    model = onnx.load(str(fake_run / "student.onnx"))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    static = tmp_path / "static.onnx"
    onnx.save(model, str(static))
    m = measure_artifacts([ArtifactToMeasure("static", "onnxruntime", static)], None, None, BenchSettings(**QUICK))
    # input_shape None: the worker read (C, H, W) from the file itself.
    assert list(m["static"].batch_sweep) == ["1"]
    assert m["static"].skipped_batches == {"4": "the artifact takes only batch 1"}


def test_broken_artifact_names_itself(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeBackendError, match="broken"):
        measure_artifacts([ArtifactToMeasure("broken", "onnxruntime", bad)], SHAPE, None, BenchSettings(**QUICK))


def test_settings_and_names_are_checked(fake_run):
    with pytest.raises(ConfigError, match="Batch sizes"):
        measure_artifacts([], SHAPE, None, BenchSettings(batch_sizes=(0,)))
    a = ArtifactToMeasure("x", "onnxruntime", fake_run / "student.onnx")
    with pytest.raises(ConfigError, match="unique"):
        measure_artifacts([a, a], SHAPE, None, BenchSettings(**QUICK))
    with pytest.raises(RuntimeBackendError, match="Unknown runtime"):
        measure_artifacts([ArtifactToMeasure("x", "tflite", fake_run / "student.onnx")], SHAPE, None, BenchSettings(**QUICK))


def test_a_target_asking_for_more_threads_than_cores_is_capped(monkeypatch):
    from edgekd.bench import measure

    monkeypatch.setattr(measure, "usable_cores", lambda: 2)
    threads, note = measure.resolve_threads(BenchSettings(), load_target("rpi5"))  # rpi5: 4 threads
    assert threads == 2 and "asks for 4 threads" in note
    assert measure.resolve_threads(BenchSettings(), load_target("host-cpu")) == (2, None)
    assert measure.resolve_threads(BenchSettings(threads=3), load_target("rpi5")) == (3, None)  # asked: kept


@pytest.mark.parametrize("loaded, batch, refused", [
    ({}, 8, None),
    ({"fixed_batch": 1}, 8, "takes only batch 1"),
    ({"min_batch": 1, "max_batch": 1}, 8, "admits batch 1..1"),  # `edgekd build`'s default engine profile
    ({"min_batch": 1, "max_batch": 8}, 8, None),
    ({"min_batch": 4, "max_batch": 8}, 1, "admits batch 4..8"),
])
def test_batches_outside_an_engine_profile_are_skipped_with_the_reason(loaded, batch, refused):
    from edgekd.bench.measure import batch_refusal

    reason = batch_refusal(loaded, batch)
    assert (reason is None) if refused is None else (refused in reason)


def test_the_worker_never_times_a_batch_its_runner_would_split():
    from edgekd.bench.worker import Worker
    from edgekd.errors import DataError

    class BatchOneEngine:  # what EngineRunner reports for a max-batch-1 profile
        min_batch, max_batch, fixed_batch, input_shape = 1, 1, None, SHAPE

        def run(self, x):
            return np.zeros((len(x), 4), np.float32)

    worker = Worker()
    worker.runner, worker.input_shape = BatchOneEngine(), SHAPE
    assert worker.warmup(batch=1, seconds=0)["iterations"] == 1
    with pytest.raises(DataError, match="batch 8"):
        worker.warmup(batch=8, seconds=0)
