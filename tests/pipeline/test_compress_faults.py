"""`edgekd compress` when the world is unkind: two runs on one directory, a full disk, a read-only --out.

Through the real CLI (click's runner, in this process; the run holding the lock is a separate
process); the disks are small tmpfs mounts (the tests skip, saying why, where mounting is refused).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from edgekd import rundir
from edgekd.cli import main

REPO = Path(__file__).resolve().parents[2]

# The teacher trains long enough for a second command to arrive; the first is stopped by the test.
SLOW = f"""
data: {{kind: digits, input_size: 16}}
teacher: {{model: resnet10t, train: {{epochs: 50, batch_size: 128}}}}
seed: {{seed}}
"""


def _cli(*args):
    """`edgekd ARGS` in this process: (exit code, everything it printed)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _config(tmp_path: Path, seed: int = 0, name: str = "model.yaml") -> Path:
    path = tmp_path / name
    path.write_text(SLOW.replace("{seed}", str(seed)))
    return path


def _wait_for_lock(run_dir: Path, proc: subprocess.Popen, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            holder = json.loads((run_dir / rundir.LOCK).read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            holder = {}
        if holder.get("pid") == proc.pid and (run_dir / "config.json").is_file():
            return holder
        time.sleep(0.1)
    raise AssertionError(f"the first run never took the lock (exit {proc.poll()}): {proc.communicate()[1][-2000:]}")


def _default_sigint() -> None:
    """In the child before it starts: Ctrl-C's default action. A suite launched in the background (`cmd &` in a
    script) runs with SIGINT ignored, which Python, and so the run under test, would inherit and keep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _half_files(run_dir: Path) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if ".partial" in p.name]


def test_a_second_run_on_the_same_directory_stops_at_the_lock_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "edgekd", "compress", str(_config(tmp_path)), "--out", str(run_dir),
                              "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                             preexec_fn=_default_sigint)
    try:
        _wait_for_lock(run_dir, first)
        config_json = (run_dir / "config.json").read_text()
        code, output = _cli("compress", _config(tmp_path, seed=1, name="other.yaml"), "--out", run_dir)
        assert code == 9, output
        assert f"PID {first.pid}" in output and "edgekd compress" in output
        assert (run_dir / "config.json").read_text() == config_json  # the second run's config never landed
        assert json.loads(config_json)["seed"] == 0
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    # 130 from edgekd's handler; CPython may instead end the process by SIGINT itself (-2) when the
    # interrupt lands inside a module import (here: scipy, while the data stage loads). A shell
    # reports both as 130, and both mean the same thing to the user.
    assert first.returncode in (130, -signal.SIGINT)
    assert not _half_files(run_dir) and not (run_dir / rundir.SCRATCH).exists()


def test_a_full_disk_during_training_names_the_file_and_leaves_no_half_file(tmp_path, tmpfs, single_thread):
    disk = tmpfs("6m")  # holds the data stage (about 2.5 MB), not the teacher's epoch checkpoint
    run_dir = disk / "run"
    config = tmp_path / "model.yaml"
    config.write_text(SLOW.replace("epochs: 50", "epochs: 1").replace("{seed}", "0"))
    code, output = _cli("compress", config, "--out", run_dir)
    assert code == 8, output
    assert "No space left on the device holding" in output and str(run_dir / "work" / "teacher") in output
    assert "internal error" not in output and "inline_container" not in output
    assert (run_dir / "data" / "val.npz").is_file()  # what finished is kept
    assert not _half_files(run_dir) and not (run_dir / rundir.SCRATCH).exists()


def test_a_read_only_out_is_a_clear_error(tmp_path, tmpfs):
    disk = tmpfs("1m", read_only=True)
    code, output = _cli("compress", _config(tmp_path), "--out", disk / "run")
    assert code == 8, output
    assert f"{disk / 'run'} is on a read-only file system" in output


def test_an_out_that_is_a_file_is_a_clear_error(tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    code, output = _cli("compress", _config(tmp_path), "--out", out)
    assert code == 8 and "is a file, not a folder" in output
    assert out.read_text() == "not a folder"
