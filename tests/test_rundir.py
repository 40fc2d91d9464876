"""Run-directory housekeeping (edgekd.rundir): the lock, scratch space, half files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd import rundir
from edgekd.errors import BusyError

REPO = Path(__file__).resolve().parent.parent

_HOLD = """
import sys, time
from pathlib import Path
from edgekd import rundir
with rundir.hold(Path(sys.argv[1]), "test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_directory_refuses_a_second_holder_naming_the_pid(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(BusyError) as err:
            with rundir.hold(tmp_path, "second"):
                pytest.fail("the lock was taken twice")
        assert f"PID {proc.pid}" in err.value.message and "test holder" in err.value.message
        assert err.value.exit_code == 9
    finally:
        proc.kill()
        proc.wait()
    with rundir.hold(tmp_path, "after kill -9"):  # the OS released the dead holder's lock
        holder = json.loads((tmp_path / rundir.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "after kill -9"


def test_clean_removes_scratch_and_half_files_only(tmp_path):
    (tmp_path / rundir.SCRATCH / "gate-x").mkdir(parents=True)
    (tmp_path / rundir.SCRATCH / "gate-x" / "attempt0.onnx").write_bytes(b"x" * 100)
    (tmp_path / "work" / "teacher").mkdir(parents=True)
    for half in ("work/teacher/last.pt.partial", "student.onnx.partial", "cache/logits.partial.npy"):
        (tmp_path / half).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / half).write_bytes(b"half")
    for kept in ("work/teacher/last.pt", "student.onnx", "report.json"):
        (tmp_path / kept).write_bytes(b"whole")
    removed = rundir.clean(tmp_path)
    assert sorted(removed) == sorted([rundir.SCRATCH, "work/teacher/last.pt.partial", "student.onnx.partial",
                                      "cache/logits.partial.npy"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "report.json", "student.onnx", "work/teacher/last.pt"]


def test_scratch_lives_under_the_folder_and_leaves_nothing_outside_a_run_directory(tmp_path):
    with rundir.scratch(tmp_path, "gate-") as tmp:
        assert tmp.parent == tmp_path / rundir.SCRATCH and tmp.name.startswith("gate-")
        (tmp / "attempt0.onnx").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".edgekd").mkdir()
    (tmp_path / ".edgekd" / "export.json").write_text("{}")  # a run directory's records stay
    with rundir.scratch(tmp_path, "quant-"):
        pass
    assert sorted(p.name for p in (tmp_path / ".edgekd").iterdir()) == ["export.json"]


def test_a_killed_command_leaves_its_scratch_where_the_next_one_removes_it(tmp_path):
    script = ("import sys, time\nfrom pathlib import Path\nfrom edgekd import rundir\n"
              "with rundir.scratch(Path(sys.argv[1]), 'gate-') as tmp:\n"
              "    (tmp / 'attempt0.onnx').write_bytes(b'x' * 1000)\n    print(tmp, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    left = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert left.is_dir() and left.parent == tmp_path / rundir.SCRATCH  # not /tmp, not the run directory's root
    with rundir.hold(tmp_path, "next"):
        rundir.clean(tmp_path)
    assert not (tmp_path / rundir.SCRATCH).exists()
