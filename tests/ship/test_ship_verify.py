"""`edgekd verify`: hashes, loading, golden outputs; tampering is caught and named."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd.errors import VerifyError
from edgekd.ship import ship
from edgekd.ship.cli import verify_command
from edgekd.ship.verify import TOLERANCES, compare, verify_bundle
from edgekd.targets import load_target


@pytest.fixture(scope="module")
def shipped(fake_run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("v") / "bundle"
    result = ship(fake_run, load_target("host-cpu"), str(dest))
    assert result.destination == str(dest) and result.models == ["student.onnx", "student.int8.onnx"]
    return dest


@pytest.fixture
def copy(shipped, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(shipped, dest)
    return dest


def test_a_good_bundle_verifies(shipped):
    result = verify_bundle(shipped)
    # 2 models + 2 sidecars + golden inputs, labels and 2 outputs + data/val.npz
    assert result.files_checked == 9 and result.unlisted_files == []
    assert [(m.file, m.precision) for m in result.models] == [("student.onnx", "fp32"), ("student.int8.onnx", "int8")]
    for m in result.models:
        assert m.max_abs_diff <= m.allowed_abs_diff and m.top1_agreement == 1.0
    res = CliRunner().invoke(verify_command, [str(shipped)], catch_exceptions=False)
    assert res.exit_code == 0 and res.output.strip().endswith("OK")


def test_a_changed_byte_is_named(copy):
    model = copy / "student.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=r"^student\.int8\.onnx: SHA-256 mismatch"):
        verify_bundle(copy)
    with pytest.raises(VerifyError, match="student.int8.onnx"):
        verify_bundle(copy, hashes_only=True)
    res = CliRunner().invoke(verify_command, [str(copy)])
    assert isinstance(res.exception, VerifyError) and res.exception.exit_code == 7


def test_missing_file_and_manifest(copy):
    (copy / "golden" / "student-fp32.npy").unlink()
    with pytest.raises(VerifyError, match=r"golden/student-fp32\.npy: listed in the manifest but missing"):
        verify_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(VerifyError, match="no manifest.json"):
        verify_bundle(copy)


def test_wrong_outputs_with_consistent_hashes_are_caught(copy):
    """A bundle whose hashes agree but whose golden outputs do not: the model check names the file."""
    manifest = json.loads((copy / "manifest.json").read_text())
    golden = copy / "golden" / "student-fp32.npy"
    np.save(golden, np.load(golden) + 1.0)
    from edgekd.ship.verify import sha256_file

    manifest["files"]["golden/student-fp32.npy"] = sha256_file(golden)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match=r"^student\.onnx: outputs on the golden inputs differ.*fp32 tolerance"):
        verify_bundle(copy)


def test_unlisted_files_are_reported_not_fatal(copy):
    (copy / "notes.txt").write_text("hello")
    assert verify_bundle(copy, hashes_only=True).unlisted_files == ["notes.txt"]


@pytest.mark.parametrize(
    "precision, delta, ok",
    [
        ("fp32", 5e-4, True),  # scale 10: allowed 1e-3 + 1e-3 * |golden|
        ("fp32", 5e-2, False),
        ("fp16", 5e-2, True),  # allowed 0.1 + 1e-2 * |golden|
        ("fp16", 0.5, False),
        ("int8", 0.5, True),  # allowed 0.1 * 10 = 1.0
        ("int8", 1.5, False),
    ],
)
def test_tolerances(precision, delta, ok):
    golden = np.array([[10.0, -2.0, 3.0], [1.0, 8.0, -10.0]], dtype=np.float32)
    out = golden + np.float32(delta) * np.array([[1, -1, 1], [-1, 1, 1]], dtype=np.float32)
    assert compare(out, golden, precision)[0] is ok


def test_int8_needs_top1_agreement():
    golden = np.array([[1.0, 0.9], [1.0, 0.9], [1.0, 0.9], [1.0, 0.9]], dtype=np.float32)
    flipped = golden[:, ::-1].copy()  # within 0.1 * scale everywhere, but every argmax flips
    ok, max_diff, _, top1 = compare(flipped, golden, "int8")
    assert max_diff == pytest.approx(0.1) and top1 == 0.0 and not ok
    assert TOLERANCES["int8"].min_top1 == 0.75
    assert compare(golden[:, :1], golden, "fp32")[0] is False  # shape mismatch
