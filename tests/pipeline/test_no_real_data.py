"""data.kind: synthetic: a whole compress run with no real labelled image (only a teacher checkpoint, its
classes and input shape). Choices on held-out synthetic images, an INT8 gate on agreement with the FP32
student, and a report that says accuracy is unmeasured wherever an accuracy would be."""

import json

import numpy as np
import pytest
import torch
import yaml

from edgekd.config import load_config
from edgekd.errors import ConfigError
from edgekd.pipeline.compress import compress
from edgekd.ui import UI

CLASSES = ["ant", "bee", "cat", "dog"]
UNMEASURED = "unmeasured (no real labelled data)"


def _teacher_file(path):
    """A test_resnet teacher for 4 classes, 1 channel, with BatchNorm statistics of structured inputs (what
    DAFL's BN prior reads), saved as a plain state dict: all a user without data has."""
    from edgekd.models.io import build

    torch.manual_seed(0)
    model = build("test_resnet", {"num_classes": len(CLASSES), "in_chans": 1})
    g = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(32, 1, 12, 12, generator=g) * 0.5 + torch.randint(0, 3, (32, 1, 1, 1), generator=g))
    torch.save(model.eval().state_dict(), path)
    return path


BASE = {
    "version": 1, "name": "noreal",
    "data": {"kind": "synthetic", "classes": CLASSES, "input_size": 12, "channels": 1,
             "synthetic": {"method": "dafl", "count": 96, "holdout": 32, "seed": 0, "batch_size": 16, "rounds": 2,
                           "generator_width": 8, "z_dim": 8}},
    "teacher": {"model": "test_resnet", "checkpoint": "teacher.pth"},
    "student": {"width": 0.5, "depth": 1.0},
    "distill": {"losses": [{"kind": "kd", "alpha": 1.0, "temperature": 2.0}],
                "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "warmup_epochs": 0}},
    "quantize": {"max_int8_drop": 1.0},  # the gate's measure is under test, not a tiny student's INT8 quality
    "targets": ["host-cpu"],
    "bench": {"warmup_s": 0.0, "min_iterations": 2, "min_seconds": 0.0, "batch_sizes": [1], "rounds": 1},
}


def _write(tmp_path, edit=None, name="noreal.yaml"):
    data = json.loads(json.dumps(BASE))
    if edit:
        edit(data)
    if not (tmp_path / "teacher.pth").exists():
        _teacher_file(tmp_path / "teacher.pth")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def test_a_whole_compress_run_without_real_data(tmp_path):
    result = compress(_write(tmp_path), out=tmp_path / "run", ui=UI(quiet=True))
    run, records = result.run_dir, result.records

    # the data stage wrote only the summary; the synthetic stage the held-out val file and calibration samples
    assert not (run / "data/test.npz").exists()
    with np.load(run / "data/val.npz") as npz:
        val_x, val_y = npz["x"], npz["y"]
        assert list(npz["classes"]) == CLASSES
    assert val_x.shape == (32, 1, 12, 12)
    store = records["synthetic"]["result"]["transfer_set"]
    stored = np.load(run / store["path"] / "labels.npy")
    assert np.bincount(val_y, minlength=4).sum() == 32 and set(val_y) <= set(stored)  # teacher labels
    from edgekd.data import stratified_subsample

    held_out = stratified_subsample(stored, 32, 0)  # data.synthetic.holdout of the store, seeded by its seed
    np.testing.assert_array_equal(val_y, stored[held_out])
    with np.load(run / "data/calib.npz") as npz:  # the manifest's split train: the training images only
        assert len(npz["x"]) > 0 and not set(npz["indices"]) & set(held_out)

    # the teacher was used as loaded: nothing to fine-tune it on, no accuracy
    teacher = records["teacher"]["result"]
    assert teacher["trained"] is False and teacher["val_accuracy"] is None and "not fine-tuned" in teacher["finetune"]

    # the student trained on the 64 training images only; its choices scored agreement with the teacher
    student = records["student"]["result"]
    assert student["synthetic"]["images"] == 64 and student["synthetic"]["held_out"] == 32
    assert student["val_accuracy"] is None and 0 <= student["val_teacher_agreement"] <= 1
    from edgekd.models.io import load_model

    model = load_model(run / "student.safetensors").eval()
    with torch.no_grad():
        agreement = float((model(torch.from_numpy(val_x)).argmax(1).numpy() == val_y).mean())
    assert agreement == pytest.approx(student["val_teacher_agreement"])

    # the INT8 gate: agreement with the FP32 student (its own reference is 1 by definition)
    quantize = records["quantize"]["result"]
    assert quantize["reference_val_accuracy"] == 1.0
    assert quantize["gate_measure"].startswith("agreement with the FP32 student on 32 held-out synthetic images")

    # the report: no accuracy anywhere, and it says why
    report = json.loads((run / "report.json").read_text())
    assert report["dataset"]["real_data"] is False and "no real labelled data" in report["dataset"]["accuracy"]
    for row in report["artifacts"]:
        assert row["accuracy"] is None and row["accuracy_unmeasured"] == "no real labelled data"
        assert row["accuracy_drop_vs_teacher"] is None if row["model"] == "student" else True
        assert "accuracy" not in row["budget"]["checks"]
    assert {r["name"] for r in report["artifacts"]} >= {"teacher-pytorch", "student-fp32"}
    assert any("Teacher not fine-tuned" in n for n in report["notes"])
    md = (run / "report.md").read_text()
    assert "Accuracy unmeasured (no real labelled data)" in md
    assert md.count(f"| {UNMEASURED} |") == len(report["artifacts"])
    assert "agreement with the FP32 student" in md and "held out of training" in md
    html = (run / "report.html").read_text()
    assert html.count(UNMEASURED) >= len(report["artifacts"])
    assert "unmeasured (no real labelled data)" in result.summary()
    assert all("--data" not in c for step in report["on_device"] for c in step["commands"])

    # the device bundle: golden inputs are the held-out synthetic images, no test split ships, nothing is scored
    from edgekd.ship.bundle import build_bundle
    from edgekd.ship.verify import verify_bundle
    from edgekd.targets import load_target

    bundle = build_bundle(run, load_target("host-cpu"), tmp_path / "bundle", artifacts=["student-fp32"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["test"] is None and not (bundle / "data").exists() and "unmeasured" in manifest["accuracy"]
    assert "held-out synthetic" in manifest["golden"]["from"] and manifest["golden"]["samples"] == 32
    np.testing.assert_array_equal(np.load(bundle / "golden/inputs.npy"), val_x)
    checked = verify_bundle(bundle)
    assert [m.name for m in checked.models] == ["student-fp32"] and checked.models[0].top1_agreement == 1.0


def test_a_jetson_target_without_real_data_gets_agreement_checked_files(tmp_path):
    """TensorRT files from a run without real labels: the INT8 (symmetric S8, TensorRT's rules) and FP16 files
    are checked in ONNX Runtime by agreement with the FP32 student on the held-out synthetic images, no accuracy
    is claimed, and the on-device bench command times the engine without a test split."""
    def jetson(d):
        d["targets"] = ["jetson-orin-nano"]
        d["quantize"] = {"enabled": False, "max_int8_drop": 1.0}  # the ONNX Runtime file is another test's
        d["data"]["synthetic"].update(count=160, holdout=64)  # an INT8 device check needs 64 golden samples

    result = compress(_write(tmp_path, jetson), out=tmp_path / "run", ui=UI(quiet=True))
    run, trt = result.run_dir, result.records["tensorrt"]["result"]

    ptq = trt["variants"]["qdq"]
    assert ptq["gate_measure"].startswith("agreement with the FP32 student on 64 held-out synthetic images")
    assert ptq["scheme"]["types"] == "S8S8" and ptq["val_accuracy_onnxruntime"] >= 0.0
    from edgekd.onnxtools.trt_rules import check_qdq_for_tensorrt

    assert check_qdq_for_tensorrt(run / ptq["file"]) == []
    # an FP16 file (what a strongly typed build ships) gets the same check: agreement, no accuracy
    from edgekd.config import load_config
    from edgekd.onnxtools.fp16 import convert
    from edgekd.pipeline.context import RunContext
    from edgekd.pipeline.tensorrt_stage import _onnxruntime_check
    from edgekd.runtime.ort import make_session, predict

    convert(run / "student.onnx", tmp_path / "student.fp16.onnx")
    check = _onnxruntime_check(RunContext(load_config(tmp_path / "noreal.yaml"), run), tmp_path / "student.fp16.onnx")
    assert check["accuracy_onnxruntime"] is None and check["accuracy_unmeasured"] == "no real labelled data"
    with np.load(run / "data/val.npz") as npz:
        val_x = npz["x"]
    fp32 = predict(make_session(run / "student.onnx"), val_x).argmax(1)
    agreement = float((predict(make_session(tmp_path / "student.fp16.onnx"), val_x).argmax(1) == fp32).mean())
    assert check["agreement_onnxruntime"] == pytest.approx(agreement) and agreement > 0.9
    benches = [c for row in trt["builds"] for c in row["commands"] if c.startswith("edgekd bench ")]
    assert len(benches) == 2 and all("--data" not in c for c in benches)
    report = json.loads((run / "report.json").read_text())
    assert all(row["accuracy"] is None for row in report["artifacts"])

    # the Jetson bundle: golden inputs from the held-out synthetic images, no test split, files that verify
    from edgekd.ship.bundle import build_bundle
    from edgekd.ship.verify import verify_bundle
    from edgekd.targets import load_target

    bundle = build_bundle(run, load_target("jetson-orin-nano"), tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["test"] is None and not (bundle / "data").exists()
    assert {m["file"] for m in manifest["models"]} >= {ptq["file"]}
    assert all(m.top1_agreement >= 0.9 for m in verify_bundle(bundle).models)


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["data"].pop("synthetic"), "there is no data.synthetic section"),
    (lambda d: d["data"].pop("classes"), "set data.classes"),
    (lambda d: d["data"].pop("input_size"), "set data.input_size"),
    (lambda d: d["data"].update(path="images"), "data.path describes real ones"),
    (lambda d: d["data"].update(test_fraction=0.1), "data.test_fraction describes real ones"),
    (lambda d: d["data"]["synthetic"].update(holdout=96), "leaves none of the 96"),
    (lambda d: d["teacher"].pop("checkpoint"), "give the trained teacher as teacher.checkpoint"),
    (lambda d: d["teacher"].update(finetune=True), "remove teacher.finetune"),
    (lambda d: d["distill"].update(synthetic_fraction=0.5), "has none: remove synthetic_fraction"),
    (lambda d: d["distill"].update(unlabeled_fraction=0.5), "remove unlabeled_fraction"),
    (lambda d: d["student"].update(init="teacher", width=0.5, depth=1.0), "use student.init: random"),
])
def test_ambiguous_no_real_data_configs_are_refused_at_load(tmp_path, edit, words):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, edit))
    assert words in str(err.value.message) + str(err.value.hint)


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["data"].update(kind="digits"), "data.classes is for data.kind: synthetic"),
    (lambda d: (d["data"].update(kind="digits"), d["data"].pop("classes")), "remove holdout"),
])
def test_no_real_data_keys_are_refused_with_real_data(tmp_path, edit, words):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, edit))
    assert words in str(err.value.message)


def test_with_data_use_report_real_labels_only_score_the_report(tmp_path):
    """A small real set beside data.synthetic, asked to be used for the report only: its test split is scored,
    nothing trains or chooses on its labels (held-out synthetic images choose), and the teacher is not tuned."""
    def report_only(d):
        d["data"] = {"kind": "digits", "input_size": 12, "use": "report", "synthetic": d["data"]["synthetic"]}
        d["quantize"] = {"enabled": False}

    (tmp_path / "teacher.pth").unlink(missing_ok=True)
    from edgekd.models.io import build

    torch.manual_seed(0)  # digits: 10 classes
    torch.save(build("test_resnet", {"num_classes": 10, "in_chans": 1}).state_dict(), tmp_path / "teacher.pth")
    result = compress(_write(tmp_path, report_only), out=tmp_path / "run", ui=UI(quiet=True))
    run, records = result.run_dir, result.records

    assert set(records["data"]["outputs"]) == {"data/test.npz", "data/summary.json"}
    with np.load(run / "data/val.npz") as npz:
        assert len(npz["y"]) == 32  # the held-out synthetic images, not the real val split
    assert records["teacher"]["result"]["trained"] is False
    assert "data.use: report" in records["teacher"]["result"]["finetune"]
    student = records["student"]["result"]
    assert student["synthetic"]["real_samples"] == 0 and student["val_accuracy"] is None
    assert 0 <= student["val_teacher_agreement"] <= 1

    report = json.loads((run / "report.json").read_text())
    assert report["dataset"]["use"] == "report"
    with np.load(run / "data/test.npz") as npz:
        samples = len(npz["y"])
    for row in report["artifacts"]:  # scored on the real test split
        assert 0 <= row["accuracy"] <= 1 and row["accuracy_samples"] == samples
    md = (run / "report.md").read_text()
    assert "data.use: report: the real labelled data scored the report's accuracy" in md
    assert UNMEASURED not in md


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d["data"].update(kind="digits", use="report"), d["data"].pop("classes"), d["data"].pop("synthetic")),
     "data.use: report keeps the real data for the report only"),
    (lambda d: d["data"].update(use="report"), "data.use describes real ones"),
    (lambda d: (d["data"].update(kind="digits", use="report"), d["data"].pop("classes"),
                d["teacher"].update(finetune=True)), "data.use: report keeps the real ones for the report"),
])
def test_data_use_report_refusals(tmp_path, edit, words):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, edit))
    assert words in str(err.value.message)


def test_validate_says_what_stands_in_for_real_labels(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    out = CliRunner().invoke(main, ["validate", str(_write(tmp_path))])
    assert out.exit_code == 0, out.output
    assert "no real labelled data: 4 classes (ant, bee, cat, dog), input 1x12x12" in out.output
    assert "64 dafl images will train the student and 32 are held out" in out.output
    assert "accuracy will be reported as unmeasured" in out.output

    bad = CliRunner().invoke(main, ["validate", str(_write(tmp_path, lambda d: d["data"].pop("classes"), "bad.yaml"))])
    assert bad.exit_code != 0 and "set data.classes" in bad.output


def test_a_merged_table_says_unmeasured_for_rows_without_real_data():
    from edgekd.report.merge import artifact_rows, markdown_table

    row = {"name": "student-fp32", "model": "student", "runtime": "onnxruntime", "precision": "fp32",
           "accuracy": None, "accuracy_unmeasured": "no real labelled data", "latency_ms": {"p50": 1.0, "p99": 2.0}}
    device_row = {**row, "accuracy_unmeasured": None}  # a device bench without --data: no accuracy, no claim
    table = markdown_table(artifact_rows({"artifacts": [row, device_row]}, "host"))
    assert table.count("unmeasured (no real labelled data)") == 1 and "| – |" in table
