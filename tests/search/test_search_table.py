"""The offline path: `edgekd profile` (torch-free, in its own process) writes a latency table on the
"device"; the table backend reads it, refusing one measured under other conditions."""

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

from edgekd.errors import ConfigError
from edgekd.search.bundle import write_candidate_bundle
from edgekd.search.config import SearchConfig
from edgekd.search.measure import measure_candidates, open_backends
from edgekd.search.plan import MeasureOptions, plan_targets
from edgekd.ship.verify import verify_bundle
from edgekd.targets import load_target
from tests.search.conftest import GRID

REPO = Path(__file__).resolve().parents[2]
BOARD = load_target("host-cpu").model_copy(update={"name": "board", "threads": 1})
QUICK_ARGS = ["--threads", "1", "--warmup", "0.02", "--iterations", "5", "--seconds", "0.02", "--rounds", "1"]


def run_profile(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """`edgekd profile` as on a device without torch: a sitecustomize makes `import torch` fail."""
    block = tmp_path / "no-torch"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\nsys.modules['timm'] = None\n")
    env = {"PYTHONPATH": f"{block}:{REPO}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "edgekd", "profile", *map(str, args), *QUICK_ARGS],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


@pytest.fixture(scope="module")
def table(prepared, tmp_path_factory):
    """A table for three of the four candidates: two from a candidate bundle, one a plain ONNX file."""
    tmp = tmp_path_factory.mktemp("table")
    bundle = write_candidate_bundle(prepared[:2], BOARD, tmp / "bundle")
    out = run_profile(tmp, bundle, prepared[2].path, "-o", tmp / "table.json")
    assert out.returncode == 0, out.stderr
    return tmp / "table.json", bundle, out


def search_with(table_path: Path, **more) -> SearchConfig:
    return SearchConfig(**{**GRID.model_dump(), "latency_table": {"board": str(table_path)}, **more})


def test_profile_writes_a_table_that_says_how_it_was_measured(table, prepared):
    path, bundle, out = table
    t = json.loads(path.read_text())
    assert t["format"] == "edgekd.latency-table/1"
    assert t["runtime"] == {"name": "onnxruntime", "version": onnxruntime.__version__}
    assert t["machine"]["arch"] and t["machine"]["cpu"] and t["threads"] == 1 and t["input_sizes"] == [32]
    assert [e["name"] for e in t["entries"]] == [p.name for p in prepared[:3]]
    assert [e["arch_id"] for e in t["entries"]] == [p.architecture.arch_id for p in prepared[:3]]
    assert [e["precision"] for e in t["entries"]] == ["fp32", "int8", "fp32"]
    assert all(e["latency_ms"]["p50"] > 0 and e["iterations"] >= 5 for e in t["entries"])
    assert "wrote" in out.stdout and "3 measurements" in out.stdout
    # The candidate bundle is a hash-checked edgekd bundle.
    checked = verify_bundle(bundle)  # 2 ONNX files + the empty golden inputs
    assert checked.files_checked == 3 and checked.models == []


def test_profile_continues_a_table_it_made(table, tmp_path):
    path, bundle, _ = table
    copy = tmp_path / "table.json"
    copy.write_text(path.read_text())
    before = json.loads(copy.read_text())["entries"]
    again = run_profile(tmp_path, bundle, "-o", copy)
    assert again.returncode == 0, again.stderr
    assert "2 of 2 files already in" in again.stderr
    assert json.loads(copy.read_text())["entries"] == before  # kept (the plain file's too), not measured again


def test_profile_refuses_a_changed_bundle(table, tmp_path):
    _, bundle, _ = table
    import shutil

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    onnx_file = next(copy.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    out = run_profile(tmp_path, copy, "-o", tmp_path / "t.json")
    assert out.returncode == 7 and "SHA-256 mismatch" in out.stderr


def test_the_table_backend_reads_measurements(table, prepared, tmp_path):
    path, _, _ = table
    backends = open_backends(plan_targets(search_with(path), [BOARD], 32), MeasureOptions())
    assert backends["board"].runtime.version == onnxruntime.__version__
    result = measure_candidates(prepared[:3], backends, tmp_path)
    entries = json.loads(path.read_text())["entries"]
    assert [r.p50_ms for r in result.rows] == [e["latency_ms"]["p50"] for e in entries]
    assert result.rows[0].where == f"latency table {path}"
    with pytest.raises(ConfigError, match="has no measurement of 1 candidate: resnet18-w0.5-d0.5-32px-int8") as info:
        measure_candidates(prepared, backends, tmp_path)
    assert "edgekd profile" in info.value.hint


@pytest.mark.parametrize("change, says", [
    ({"runtime_version": "1.0"}, f"measured with onnxruntime {onnxruntime.__version__}, target 'board' runs 1.0"),
    ({"threads": 4}, "measured with 1 threads, target 'board' uses 4"),
    ({"arch": "aarch64"}, "target 'board' is aarch64"),
])
def test_a_table_for_other_conditions_is_refused(table, change, says):
    path, _, _ = table
    board = BOARD.model_copy(update=change)
    with pytest.raises(ConfigError, match="does not fit target 'board'") as info:
        open_backends(plan_targets(search_with(path), [board], 32), MeasureOptions())
    assert says in str(info.value)


def test_a_table_without_the_input_size_is_refused(table):
    path, _, _ = table
    with pytest.raises(ConfigError, match=r"no measurements at input size 48 px \(it has 32\)"):
        open_backends(plan_targets(search_with(path, input_sizes=[32, 48]), [BOARD], 32), MeasureOptions())
    assert BOARD.model_copy(update={"runtime_version": onnxruntime.__version__.rsplit(".", 1)[0]})  # 1.32 matches
    open_backends(plan_targets(search_with(path), [BOARD.model_copy(
        update={"runtime_version": onnxruntime.__version__.rsplit(".", 1)[0]})], 32), MeasureOptions())


def test_a_file_that_is_not_a_table_is_refused(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"entries": []}))
    with pytest.raises(ConfigError, match="is not an edgekd latency table"):
        open_backends(plan_targets(search_with(bad), [BOARD], 32), MeasureOptions())
