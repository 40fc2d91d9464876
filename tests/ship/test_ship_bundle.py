"""Bundles built from a real run directory: contents, manifest, selection rules; only current, contained
files of the run directory go in (docs/security.md)."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from edgekd.errors import BusyError, ConfigError, DataError
from edgekd.runtime.ort import make_session, predict
from edgekd.ship import ship
from edgekd.ship.bundle import build_bundle, select_artifacts
from edgekd.artifacts import sha256_file
from edgekd.targets import load_target
from tests.bench.fakerun import CLASSES, PREPROCESS, fake_report


@pytest.fixture(scope="module")
def bundle(fake_run, tmp_path_factory):
    return build_bundle(fake_run, load_target("host-cpu"), tmp_path_factory.mktemp("b") / "bundle", golden_samples=64)


def test_manifest_describes_the_models(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == "edgekd.bundle/1" and m["runtime"] == "onnxruntime" and m["target"]["name"] == "host-cpu"
    assert [x["name"] for x in m["models"]] == ["student-fp32", "student-int8"]  # students for ORT, fp32 + int8
    fp32, int8 = m["models"]
    assert fp32["inputs"] == [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert fp32["outputs"] == [{"name": "logits", "shape": ["batch", 4], "dtype": "float32"}]
    assert fp32["opset"] == 17 and (fp32["precision"], int8["precision"]) == ("fp32", "int8")
    assert fp32["sidecar"] == "student.onnx.json" and (bundle / "student.int8.onnx.json").is_file()
    assert m["preprocess"] == PREPROCESS  # from the sidecar
    assert m["labels"] == CLASSES  # from the ONNX metadata_props
    assert m["golden"]["samples"] == 64
    assert m["versions"]["onnxruntime"] and m["versions"]["edgekd"]
    assert not (bundle / "teacher.onnx").exists()


def test_hashes_cover_every_file(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"manifest.json", "SHA256SUMS"}
    for rel, digest in m["files"].items():
        assert sha256_file(bundle / rel) == digest
    if shutil.which("sha256sum"):  # the device-side check `edgekd ship` runs over ssh
        subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=bundle, check=True)


def test_golden_data_are_the_first_samples_through_ort(bundle, fake_run):
    with np.load(fake_run / "data" / "test.npz") as npz:
        x, y = npz["x"][:64], npz["y"][:64]
    np.testing.assert_array_equal(np.load(bundle / "golden" / "inputs.npy"), x)
    np.testing.assert_array_equal(np.load(bundle / "golden" / "labels.npy"), y)
    expected = predict(make_session(fake_run / "student.int8.onnx", threads=2), x)
    # Same runtime, same machine and thread count: bit-identical.
    np.testing.assert_array_equal(np.load(bundle / "golden" / "student-int8.npy"), expected)


def test_selection_rules():
    report = fake_report()
    host = load_target("host-cpu")
    assert [a["name"] for a in select_artifacts(report, host)] == ["student-fp32", "student-int8"]
    assert [a["name"] for a in select_artifacts(report, host, ["teacher-fp32"])] == ["teacher-fp32"]
    with pytest.raises(ConfigError, match="Did you mean 'student-int8'"):
        select_artifacts(report, host, ["student-int9"])
    with pytest.raises(ConfigError, match="not an ONNX file"):
        select_artifacts(report, host, ["teacher-pytorch"])
    # A TensorRT target gets the TensorRT-ready variants prepared for it (engines are built on
    # the device), never the ONNX Runtime QDQ file, whose asymmetric activations TensorRT rejects.
    orin = load_target("jetson-orin-nano")  # precisions fp16, int8
    with pytest.raises(ConfigError, match="no student ONNX artifact"):
        select_artifacts(report, orin)
    report["tensorrt"] = {"builds": [
        {"target": "jetson-orin-nano", "precision": p, "onnx": f, "commands": [f"edgekd build {f}"]}
        for p, f in (("fp16", "student.fp16.onnx"), ("int8", "student.int8.trt.onnx"))
    ] + [{"target": "jetson-xavier-nx", "precision": "int8", "onnx": "student.int8.trt.onnx", "commands": ["x"]}]}
    picked = select_artifacts(report, orin)
    assert [(a["name"], a["path"]) for a in picked] == [("student-fp16-trt", "student.fp16.onnx"),
                                                        ("student-int8-trt", "student.int8.trt.onnx")]
    report["artifacts"] = report["artifacts"][:2]
    with pytest.raises(ConfigError, match="no student ONNX artifact"):
        select_artifacts(report, host)


def test_missing_pieces_are_data_errors(fake_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    (run / "data" / "test.npz").unlink()
    with pytest.raises(DataError, match="test.npz"):
        build_bundle(run, load_target("host-cpu"), tmp_path / "b1")
    shutil.copy(fake_run / "data" / "test.npz", run / "data" / "test.npz")
    (run / "student.int8.onnx").unlink()
    with pytest.raises(DataError, match="student-int8"):
        build_bundle(run, load_target("host-cpu"), tmp_path / "b2")


# ------------------------------------------------------------------ what may go into a bundle


@pytest.fixture
def run(fake_run, tmp_path):
    """A private copy of the fake run directory (records included)."""
    copy = tmp_path / "run"
    shutil.copytree(fake_run, copy, symlinks=True)
    return copy


def _report_stage(run, change):
    """Re-run the report stage through the engine with change(report) applied: report.json and its
    record agree, as after a real run (the path, not the staleness check, is what is tested)."""
    from tests.bench.fakerun import fake_report, run_fake_stages

    def write(_):
        report = fake_report(run)
        change(report)
        (run / "report.json").write_text(json.dumps(report))
        return {"outputs": ["report.json", "report.md"]}

    run_fake_stages(run, [("report", write, [".edgekd/export.json", ".edgekd/quantize.json"])], force=True)


def _path(report, name, path):
    next(a for a in report["artifacts"] if a["name"] == name)["path"] = path


def _recorded(run, change):
    """Re-record the export stage with change(its artifact list) applied, then the report, through the
    engine: records and report.json agree, as if `edgekd compress` had written them (ship takes the
    artifacts from the records, so that is where a crafted path or name would have to be)."""
    from edgekd.artifacts import STUDENT_CHECKPOINT, TEACHER_CHECKPOINT
    from tests.bench.fakerun import RECORDED, fake_report, run_fake_stages

    def export(_):
        listed = [a.to_dict() for a in RECORDED["export"]]
        change(listed)
        return {"outputs": ["teacher.onnx", "teacher.onnx.json", "student.onnx", "student.onnx.json"],
                "artifacts": listed}

    def report(_):
        (run / "report.json").write_text(json.dumps(fake_report(run)))
        return {"outputs": ["report.json", "report.md"]}

    run_fake_stages(run, [("export", export, [TEACHER_CHECKPOINT, STUDENT_CHECKPOINT]),
                          ("report", report, [".edgekd/export.json", ".edgekd/quantize.json"])], force=True)


def _artifact_named(listed, name):
    return next(a for a in listed if a["name"] == name)


@pytest.fixture
def outside(tmp_path, fake_run):
    """A secret next to the run directory: a real ONNX file and a JSON one."""
    folder = tmp_path / "private"
    folder.mkdir()
    shutil.copy(fake_run / "teacher.onnx", folder / "secret.onnx")
    (folder / "secret.json").write_text('{"api_key": "do-not-ship"}')
    return folder


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_recorded_paths_outside_the_run_directory_are_not_shipped(run, outside, tmp_path, how):
    path = "../private/secret.onnx" if how == "dotdot" else str(outside / "secret.onnx")
    _recorded(run, lambda listed: _artifact_named(listed, "student-fp32").update(path=path))
    with pytest.raises(DataError, match="absolute or leaves its folder"):
        ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("which", ["student.onnx", "student.onnx.json"])
def test_symlinked_artifacts_and_sidecars_are_not_shipped(run, outside, tmp_path, which):
    (run / which).unlink()
    (run / which).symlink_to(outside / ("secret.onnx" if which.endswith(".onnx") else "secret.json"))
    with pytest.raises(DataError, match="goes through a symlink"):
        ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))
    assert not (tmp_path / "bundle").exists()


def test_report_paths_are_not_what_ships(run, outside, tmp_path):
    """report.json's paths are descriptions: the files shipped are the ones the stage records list."""
    _report_stage(run, lambda r: _path(r, "student-fp32", "../private/secret.onnx"))
    ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))
    assert sha256_file(tmp_path / "bundle" / "student.onnx") == sha256_file(run / "student.onnx")


def test_two_artifacts_with_one_file_name_are_refused(run, tmp_path):
    def twin(listed):
        listed.append({**_artifact_named(listed, "student-fp32"), "name": "student-fp32-b", "path": "b/student.onnx"})

    _recorded(run, twin)
    with pytest.raises(ConfigError, match="same file name 'student.onnx'"):
        ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))


def test_an_artifact_name_that_is_a_path_is_refused(run, tmp_path):
    _recorded(run, lambda listed: _artifact_named(listed, "student-fp32").update(name="../x"))
    with pytest.raises(DataError, match="not a plain name"):
        ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))


def test_a_stale_report_is_not_shipped(run, tmp_path):
    """A later run re-exported the student and stopped before its report: report.json describes the old file."""
    from tests.bench.fakerun import run_fake_stages

    def export_again(_):
        (run / "student.onnx").write_bytes((run / "student.onnx").read_bytes() + b"\n")  # another export
        return {"outputs": ["teacher.onnx", "teacher.onnx.json", "student.onnx", "student.onnx.json"]}

    run_fake_stages(run, [("export", export_again, ["teacher.safetensors", "student.safetensors"])], force=True)
    with pytest.raises(DataError, match=r"report.json is stale: \.edgekd/export\.json changed"):
        ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))


def test_an_edited_report_or_artifact_is_not_shipped(run, tmp_path):
    report = json.loads((run / "report.json").read_text())
    report["artifacts"][2]["accuracy"] = 0.99
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(DataError, match="not the one the report stage wrote"):
        ship(run, load_target("host-cpu"), str(tmp_path / "b1"))


def test_an_artifact_changed_after_its_stage_is_not_shipped(run, tmp_path):
    (run / "student.int8.onnx").write_bytes((run / "student.int8.onnx").read_bytes() + b"\n")
    with pytest.raises(DataError, match="student.int8.onnx .* is not the file its stage wrote"):
        ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))


def test_ship_stages_under_the_run_directory_and_removes_a_killed_ships_leftovers(run, tmp_path):
    from edgekd import rundir

    stale = run / rundir.SCRATCH / "bundle-killed"
    stale.mkdir(parents=True)
    (stale / "student.onnx").write_bytes(b"x" * 1000)
    ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))
    assert not (run / rundir.SCRATCH).exists() and (tmp_path / "bundle" / "manifest.json").is_file()


def test_ship_waits_for_no_one_a_busy_run_directory_is_refused(run, tmp_path):
    from tests.test_rundir import _holder

    holder = _holder(run)
    try:
        with pytest.raises(BusyError, match=f"PID {holder.pid}"):
            ship(run, load_target("host-cpu"), str(tmp_path / "bundle"))
    finally:
        holder.kill()
        holder.wait()
