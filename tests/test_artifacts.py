import hashlib
import json

from edgekd.artifacts import partial_path, sha256_file, sidecar_path, write_json_atomic


def test_sha256_file_matches_hashlib_over_several_chunks(tmp_path):
    data = b"edgekd" * 400_000  # > 1 MiB: more than one read
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_sidecar_and_partial_names(tmp_path):
    assert sidecar_path(tmp_path / "m.onnx").name == "m.onnx.json"
    assert partial_path(tmp_path / "m.onnx").parent == tmp_path and partial_path(tmp_path / "m.onnx") != tmp_path / "m.onnx"


def test_atomic_json_leaves_no_partial(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_missing_sidecar_is_empty_unless_required(tmp_path):
    import pytest

    from edgekd.artifacts import read_sidecar
    from edgekd.errors import DataError

    (tmp_path / "m.onnx").write_bytes(b"x")
    assert read_sidecar(tmp_path / "m.onnx") == {}
    with pytest.raises(DataError, match="has no sidecar m.onnx.json"):
        read_sidecar(tmp_path / "m.onnx", required=True)
    write_json_atomic(sidecar_path(tmp_path / "m.onnx"), {"opset": 17})
    assert read_sidecar(tmp_path / "m.onnx", required=True) == {"opset": 17}


def test_one_versions_table_for_checkpoints_sidecars_and_machines():
    from edgekd.artifacts import versions
    from edgekd.bench import sysinfo
    from edgekd.models import io

    assert sysinfo.versions is versions and io.versions is versions
    found = versions()
    assert {"edgekd", "python", "torch", "timm", "onnx", "onnxruntime", "numpy"} <= set(found)
    assert set(versions(("numpy",))) == {"edgekd", "python", "numpy"}
