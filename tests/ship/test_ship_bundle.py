"""Bundles built from a real run directory: contents, manifest, selection rules."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from edgekd.errors import ConfigError, DataError
from edgekd.runtime.ort import make_session, predict
from edgekd.ship.bundle import build_bundle, select_artifacts
from edgekd.ship.verify import sha256_file
from edgekd.targets import load_target
from tests.bench.fakerun import CLASSES, PREPROCESS, fake_report


@pytest.fixture(scope="module")
def bundle(fake_run, tmp_path_factory):
    return build_bundle(fake_run, load_target("host-cpu"), tmp_path_factory.mktemp("b") / "bundle", golden_samples=5)


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
    assert m["golden"]["samples"] == 5
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
    with np.load(fake_run / "data" / "val.npz") as npz:
        x, y = npz["x"][:5], npz["y"][:5]
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
    (run / "data" / "val.npz").unlink()
    with pytest.raises(DataError, match="val.npz"):
        build_bundle(run, load_target("host-cpu"), tmp_path / "b1")
    shutil.copy(fake_run / "data" / "val.npz", run / "data" / "val.npz")
    (run / "student.int8.onnx").unlink()
    with pytest.raises(DataError, match="student-int8"):
        build_bundle(run, load_target("host-cpu"), tmp_path / "b2")
