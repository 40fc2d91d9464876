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
