"""`edgekd compress` end to end on a tiny config: every stage real, small enough for CI."""

import json
import time
from pathlib import Path

import onnx
import pytest

from edgekd.errors import GateError
from edgekd.pipeline import train_stages
from edgekd.pipeline.compress import compress
from edgekd.pipeline.engine import read_record
from edgekd.ui import UI

REPO = Path(__file__).resolve().parents[2]

TINY = f"""
version: 1
name: tiny
data: {{kind: digits, input_size: 16}}
teacher:
  model: resnet18
  train: {{epochs: 2, batch_size: 128, lr: 0.003}}
student: {{width: 0.25, depth: 0.5}}
distill:
  train: {{epochs: 3, batch_size: 128, lr: 0.005}}
quantize:
  calibration: {REPO}/calib/digits.yaml
  max_accuracy_drop: 0.2
targets: [host-cpu, jetson-orin-nano]
bench: {{warmup_s: 0.05, min_iterations: 5, min_seconds: 0.05, batch_sizes: [1, 4], rounds: 2}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compress")
    config = folder / "tiny.yaml"
    config.write_text(TINY)
    result = compress(config, out=folder / "run", ui=UI(quiet=True))
    return config, result.run_dir


def test_run_directory_holds_every_artifact(run):
    _, run_dir = run
    for name in ("teacher.pt", "student.pt", "teacher.onnx", "student.onnx", "student.int8.x86.onnx",
                 "student.onnx.json", "student.int8.x86.onnx.json", "report.json", "report.md", "report.html",
                 "data/val.npz", "data/calib.npz", "student.int8.trt.onnx"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "staging").exists()


def test_report_json_keeps_its_contract(run):
    report = json.loads((run[1] / "report.json").read_text())
    for key in ("artifacts", "target", "dataset", "edgekd_version", "created"):
        assert key in report
    names = [a["name"] for a in report["artifacts"]]
    assert names == ["teacher-pytorch", "teacher-fp32", "student-fp32", "student-int8-x86"]
    for a in report["artifacts"]:
        assert {"name", "model", "runtime", "precision", "path", "accuracy", "peak_rss_mb", "size_mb"} <= set(a)
        assert set(a["latency_ms"]) >= {"p50", "p90", "p99"} and a["latency_ms"]["p50"] > 0
        assert set(a["budget"]) >= {"latency_ms", "pass"} and 0 <= a["accuracy"] <= 1
        assert (run[1] / a["path"]).is_file()
    assert report["target"]["name"] == "host-cpu"


def test_onnx_carries_preprocessing_and_the_jetson_opset(run):
    model = onnx.load(str(run[1] / "student.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["input_size"]) == 16 and len(json.loads(props["classes"])) == 10
    assert model.opset_import[0].version == 20  # TensorRT 10.x parser cap, the strictest target


def test_sidecars_carry_the_targets_session_options(run):
    for name in ("student.onnx.json", "student.int8.x86.onnx.json"):
        side = json.loads((run[1] / name).read_text())
        assert side["onnxruntime_sessions"]["host-cpu"]["intra_op_num_threads"] == 2
        assert side["onnxruntime_sessions"]["host-cpu"]["graph_optimization_level"] == "all"
        assert "jetson-orin-nano" not in side["onnxruntime_sessions"]


def test_jetson_builds_and_commands_are_in_the_report(run):
    report = json.loads((run[1] / "report.json").read_text())
    builds = {b["precision"]: b for b in report["tensorrt"]["builds"]}
    assert builds["int8"]["onnx"] == "student.int8.trt.onnx"
    assert builds["fp16"]["onnx"] == "student.onnx"  # TensorRT 10.3, weakly typed: FP32 ONNX + the FP16 flag
    assert builds["int8"]["commands"][0].startswith("edgekd build student.int8.trt.onnx --target jetson-orin-nano")
    assert "edgekd build" in (run[1] / "report.md").read_text()


def test_a_second_run_reuses_every_stage(run):
    config, run_dir = run
    before = {p: p.stat().st_mtime_ns for p in run_dir.glob("*.onnx")}
    started = time.perf_counter()
    result = compress(config, out=run_dir, ui=UI(quiet=True))
    assert time.perf_counter() - started < 60  # seconds, not a retrain (generous for a loaded CI box)
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*.onnx")} == before
    assert result.records["student"]["finished"] == read_record(run_dir, "student")["finished"]


def test_changed_quantize_setting_reruns_from_quantize_only(run, tmp_path):
    config, run_dir = run
    student_finished = read_record(run_dir, "student")["finished"]
    changed = tmp_path / "tiny.yaml"
    changed.write_text(config.read_text().replace("max_accuracy_drop: 0.2", "max_accuracy_drop: 0.25"))
    compress(changed, out=run_dir, ui=UI(quiet=True))
    assert read_record(run_dir, "student")["finished"] == student_finished


def test_an_impossible_int8_gate_fails_and_keeps_fp32(run, tmp_path):
    config, run_dir = run
    strict = tmp_path / "strict.yaml"
    strict.write_text(config.read_text().replace("max_accuracy_drop: 0.2", "max_accuracy_drop: 0.0")
                      .replace("quantize:\n", "quantize:\n  fallbacks: false\n"))
    fp32 = (run_dir / "student.onnx").read_bytes()
    try:
        compress(strict, out=run_dir, ui=UI(quiet=True))
    except GateError as exc:  # a pass is possible only if INT8 matches FP32 exactly
        assert "INT8" in str(exc)
    assert (run_dir / "student.onnx").read_bytes() == fp32


def test_interrupted_distillation_resumes(tmp_path, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("targets: [host-cpu, jetson-orin-nano]", "targets: [host-cpu]")
                      .replace("epochs: 2, batch_size: 128, lr: 0.003", "epochs: 1, batch_size: 128, lr: 0.003"))
    real_train = train_stages.train

    def train_then_interrupt(*args, **kwargs):
        kwargs["progress"] = _raise_after_first_epoch
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_stages, "train", train_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        compress(config, out=tmp_path / "run", ui=UI(quiet=True))
    assert not (tmp_path / "run" / "student.pt").exists()
    monkeypatch.setattr(train_stages, "train", real_train)
    result = compress(config, out=tmp_path / "run", ui=UI(quiet=True))
    assert result.records["student"]["result"]["resumed_from_epoch"] == 1
    assert result.records["teacher"]["result"]["resumed_from_epoch"] == 0


_calls = {"n": 0}


def _raise_after_first_epoch(**_):
    # The teacher trains first (1 epoch, passes); the student is interrupted after its first epoch.
    _calls["n"] += 1
    if _calls["n"] == 2:
        raise KeyboardInterrupt
