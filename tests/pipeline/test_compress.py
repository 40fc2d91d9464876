"""`edgekd compress` end to end on a tiny config: every stage real, small enough for CI.

The module's run directory is built once and only read; a test that changes the config
runs on its own copy of it (so later stages start from the same finished run every time).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekd.errors import GateError
from edgekd.pipeline import train_stages
from edgekd.pipeline.compress import compress
from edgekd.pipeline.engine import RETIRED, read_record
from edgekd.pipeline.records import current_artifacts
from edgekd.runtime.ort import accuracy, make_session, predict
from edgekd.ui import UI

TINY = """
version: 1
name: tiny
data: {kind: digits, input_size: 16}
teacher:
  model: test_resnet
  train: {epochs: 2, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student: {width: 0.5, depth: 1.0}
distill:
  train: {epochs: 2, batch_size: 128, lr: 0.01, warmup_epochs: 0}
quantize:
  max_int8_drop: 0.2
targets: [host-cpu, jetson-orin-nano, rpi5]
bench: {warmup_s: 0.02, min_iterations: 3, min_seconds: 0.02, batch_sizes: [1, 4], rounds: 2}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config, run directory) of the finished tiny run. Read it; copy it (`_copy`) to change it."""
    folder = tmp_path_factory.mktemp("compress")
    config = folder / "tiny.yaml"
    config.write_text(TINY)
    result = compress(config, out=folder / "run", ui=UI(quiet=True))
    return config, result.run_dir


def _copy(run, tmp_path, edit=lambda text: text) -> tuple[Path, Path]:
    """The finished run in a folder of this test's own, with the config edited."""
    config, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    changed = tmp_path / "tiny.yaml"
    changed.write_text(edit(config.read_text()))
    return changed, copy


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def _finished(run_dir: Path) -> dict:
    return {stage: read_record(run_dir, stage)["finished"] for stage in
            ("data", "teacher", "student", "export", "quantize", "tensorrt", "bench", "report")}


def test_run_directory_holds_every_artifact(run):
    _, run_dir = run
    for name in ("teacher.safetensors", "student.safetensors", "teacher.onnx", "student.onnx", "student.int8.onnx",
                 "student.onnx.json", "student.int8.onnx.json", "report.json", "report.md", "report.html",
                 "data/val.npz", "data/test.npz", "data/calib.npz", "student.int8.trt.onnx"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "staging").exists() and not (run_dir / RETIRED).exists()


def test_report_json_keeps_its_contract(run):
    report = _report(run[1])
    for key in ("artifacts", "target", "targets", "dataset", "measurement", "edgekd_version", "created"):
        assert key in report
    assert report["schema_version"] == 2
    names = [a["name"] for a in report["artifacts"]]
    assert names == ["teacher-pytorch", "teacher-fp32", "student-fp32", "student-int8"]
    for a in report["artifacts"]:
        assert {"name", "model", "runtime", "precision", "path", "accuracy", "peak_rss_mb", "size_mb"} <= set(a)
        assert set(a["latency_ms"]) >= {"p50", "p90", "p99"} and a["latency_ms"]["p50"] > 0
        assert set(a["budget"]) >= {"latency_ms", "pass", "measured_on_target"} and 0 <= a["accuracy"] <= 1
        assert set(a["budgets"]) == {"host-cpu", "jetson-orin-nano", "rpi5"}
        assert a["budgets"]["jetson-orin-nano"]["pass"] is None  # a CPU row is no Jetson measurement
        assert (run[1] / a["path"]).is_file()
    assert report["target"]["name"] == "host-cpu"


def test_accuracy_is_on_a_test_split_no_choice_used(run):
    report = _report(run[1])
    splits = report["dataset"]["splits"]
    assert splits["test"] > 0 and splits["train"] + splits["val"] + splits["test"] == 1797
    student = next(a for a in report["artifacts"] if a["name"] == "student-fp32")
    assert student["accuracy_samples"] == report["dataset"]["test_file"]["samples"] == splits["test"]
    with np.load(run[1] / "data" / "test.npz") as test, np.load(run[1] / "data" / "val.npz") as val:
        test_x, test_y, val_x = test["x"], test["y"], val["x"]
    assert not {row.tobytes() for row in test_x} & {row.tobytes() for row in val_x}  # disjoint from selection
    direct = accuracy(predict(make_session(run[1] / "student.onnx", threads=1), test_x), test_y)
    assert student["accuracy"] == pytest.approx(direct, abs=1 / len(test_y) + 1e-9)  # one near-tie may flip


def test_artifacts_come_from_the_stage_records(run):
    listed = [(a.name, a.path, a.targets) for a in current_artifacts(run[1])]
    assert ("student-int8", "student.int8.onnx", ("host-cpu", "rpi5")) in listed
    assert ("student-int8-trt", "student.int8.trt.onnx", ("jetson-orin-nano",)) in listed
    assert [a.name for a in current_artifacts(run[1], target="jetson-orin-nano")] == ["student-fp16-trt",
                                                                                      "student-int8-trt"]


def test_onnx_carries_preprocessing_and_the_jetson_opset(run):
    model = onnx.load(str(run[1] / "student.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["input_size"]) == 16 and len(json.loads(props["classes"])) == 10
    assert model.opset_import[0].version == 20  # TensorRT 10.x parser cap, the strictest target


def test_sidecars_carry_the_targets_session_options(run):
    for name in ("student.onnx.json", "student.int8.onnx.json"):
        side = json.loads((run[1] / name).read_text())
        assert side["onnxruntime_sessions"]["host-cpu"]["intra_op_num_threads"] == 2
        assert side["onnxruntime_sessions"]["host-cpu"]["graph_optimization_level"] == "all"
        assert side["onnxruntime_sessions"]["rpi5"]["intra_op_num_threads"] == 4  # the device's own setting
        assert "jetson-orin-nano" not in side["onnxruntime_sessions"]


def test_jetson_builds_and_commands_are_in_the_report(run):
    report = _report(run[1])
    builds = {b["precision"]: b for b in report["tensorrt"]["builds"]}
    assert builds["int8"]["onnx"] == "student.int8.trt.onnx"
    assert builds["fp16"]["onnx"] == "student.onnx"  # TensorRT 10.3, weakly typed: FP32 ONNX + the FP16 flag
    assert builds["int8"]["commands"][0].startswith("edgekd build student.int8.trt.onnx --target jetson-orin-nano")
    assert builds["int8"]["commands"][1].endswith("--data data/test.npz")
    assert "edgekd build" in (run[1] / "report.md").read_text()


def test_a_second_run_reuses_every_stage(run, tmp_path):
    config, run_dir = _copy(run, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run_dir.glob("*.onnx")}
    finished = _finished(run_dir)
    result = compress(config, out=run_dir, ui=UI(quiet=True))
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*.onnx")} == before
    assert {stage: record["finished"] for stage, record in result.records.items() if stage in finished} == finished


def test_changed_quantize_setting_reruns_from_quantize_only(run, tmp_path):
    config, run_dir = _copy(run, tmp_path, lambda text: text.replace("max_int8_drop: 0.2", "max_int8_drop: 0.25"))
    before = {stage: read_record(run_dir, stage) for stage in _finished(run_dir)}
    compress(config, out=run_dir, ui=UI(quiet=True))
    after = {stage: read_record(run_dir, stage) for stage in before}
    rerun = {stage for stage in before if after[stage]["finished"] != before[stage]["finished"]}
    # The gate's bound decides both INT8 files; bench re-runs only if they came out different.
    assert rerun - {"bench"} == {"quantize", "tensorrt", "report"}
    assert after["quantize"]["result"]["max_int8_drop"] == 0.25


def test_quantize_off_leaves_no_int8_row_and_moves_the_old_file_aside(run, tmp_path):
    config, run_dir = _copy(run, tmp_path, lambda text: text.replace("quantize:\n", "quantize:\n  enabled: false\n"))
    int8 = (run_dir / "student.int8.onnx").read_bytes()
    compress(config, out=run_dir, ui=UI(quiet=True))
    names = [a["name"] for a in _report(run_dir)["artifacts"]]
    assert names == ["teacher-pytorch", "teacher-fp32", "student-fp32"]
    assert not (run_dir / "student.int8.onnx").exists()
    assert (run_dir / RETIRED / "student.int8.onnx").read_bytes() == int8  # aside, not lost
    assert (run_dir / "data" / "calib.npz").is_file()  # the Jetson INT8 file still calibrates


def test_a_failed_int8_gate_still_writes_the_report_then_exits_5(run, tmp_path, monkeypatch):
    from edgekd.quantize import gate

    real = gate.quantize_with_gate

    def impossible(*args, **kwargs):  # a real search with a bound no INT8 file can meet
        return real(*args, **{**kwargs, "max_accuracy_drop": -1.0, "fallbacks": False})

    monkeypatch.setattr(gate, "quantize_with_gate", impossible)
    config, run_dir = _copy(run, tmp_path, lambda text: text.replace("max_int8_drop: 0.2", "max_int8_drop: 0.21"))
    fp32 = (run_dir / "student.onnx").read_bytes()
    with pytest.raises(GateError, match="INT8 accuracy gate"):
        compress(config, out=run_dir, ui=UI(quiet=True))
    report = _report(run_dir)
    assert [a["name"] for a in report["artifacts"]] == ["teacher-pytorch", "teacher-fp32", "student-fp32"]
    assert report["quantization"]["gate_passed"] is False and len(report["quantization"]["attempts"]) == 1
    assert report["failures"][0]["check"] == "INT8 accuracy gate (quantize)"
    assert "INT8 calibration attempts" in (run_dir / "report.md").read_text()
    assert (run_dir / "student.onnx").read_bytes() == fp32 and not (run_dir / "student.int8.onnx").exists()
    monkeypatch.setattr(gate, "quantize_with_gate", real)
    with pytest.raises(GateError):  # the same config: the recorded failure, not a new search
        compress(config, out=run_dir, ui=UI(quiet=True))
    assert read_record(run_dir, "quantize")["result"]["gate_passed"] is False


def test_a_target_this_host_is_not_gets_its_own_verdicts_without_a_pass(run):
    report = _report(run[1])
    for a in report["artifacts"]:
        rpi5 = a["budgets"]["rpi5"]  # x86 timings say nothing about a Cortex-A76
        assert rpi5["measured_on_target"] is False and rpi5["pass"] is None and "latency" not in rpi5["checks"]
        assert a["budgets"]["host-cpu"]["measured_on_target"] is True  # this host: judged in full
    assert report["recommended_by_target"]["rpi5"] is None
    md = (run[1] / "report.md").read_text()
    assert "## Measuring on rpi5" in md and "--target rpi5" in md and "edgekd report merge" in md


def test_interrupted_distillation_resumes(tmp_path, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("targets: [host-cpu, jetson-orin-nano, rpi5]", "targets: [host-cpu]")
                      .replace("epochs: 2, batch_size: 128, lr: 0.01", "epochs: 1, batch_size: 128, lr: 0.01", 1))
    real_train = train_stages.train
    epochs = {"n": 0}

    def interrupt_the_student(**_):
        # The teacher trains first (1 epoch, passes); the student is interrupted after its first epoch.
        epochs["n"] += 1
        if epochs["n"] == 2:
            raise KeyboardInterrupt

    def train_then_interrupt(*args, **kwargs):
        kwargs["progress"] = interrupt_the_student
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_stages, "train", train_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        compress(config, out=tmp_path / "run", ui=UI(quiet=True))
    assert not (tmp_path / "run" / "student.safetensors").exists()
    monkeypatch.setattr(train_stages, "train", real_train)
    result = compress(config, out=tmp_path / "run", ui=UI(quiet=True))
    assert result.records["student"]["result"]["resumed_from_epoch"] == 1
    assert result.records["teacher"]["result"]["resumed_from_epoch"] == 0


def test_force_forgets_epoch_checkpoints_and_the_teacher_output_cache(tmp_path):
    from edgekd.pipeline.compress import forget_intermediates

    for rel in ("cache/teacher_logits.abc.npy", "work/student/last.pt", "work/student/metrics.jsonl", "student.safetensors"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    forget_intermediates(tmp_path)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "work" / "student" / "last.pt").exists()
    assert (tmp_path / "student.safetensors").is_file()  # a finished output stays until its stage rewrites it


def test_force_never_reuses_a_finished_chain_link(tmp_path):
    import torch

    from edgekd.config import CompressConfig
    from edgekd.models.io import save_checkpoint
    from edgekd.pipeline.context import RunContext

    save_checkpoint(tmp_path / "link.pt", torch.nn.Linear(2, 2), "x", {}, metrics={"stage_key": "k"})
    resuming = RunContext(CompressConfig(), tmp_path, ui=UI(quiet=True), stage_key="k")
    assert train_stages._finished_link(resuming, "link.pt")["metrics"]["stage_key"] == "k"
    forced = RunContext(CompressConfig(), tmp_path, ui=UI(quiet=True), stage_key="k", force=True)
    assert train_stages._finished_link(forced, "link.pt") is None
