"""`edgekd compress` with `student.search` measuring on a device over ssh (a real loopback sshd, as the
ship tests use): the device is reached before anything is written, its candidates are measured there, and
a budget none of them meets stops the run before the teacher trains (which keeps this test short)."""

import json

import pytest

from edgekd.errors import ConfigError
from edgekd.pipeline import search_stage
from edgekd.pipeline.compress import compress
from edgekd.pipeline.engine import read_record
from edgekd.search import MeasureOptions
from edgekd.ui import UI
from tests.pipeline.test_search_stage import QUICK, TINY
from tests.search.test_search_ssh import DEVICE_EDGEKD
from tests.ship.test_ship_ssh import _free_port, pytestmark, sshd  # noqa: F401  (the loopback sshd fixture)


def _config(folder, host: str, latency_ms: float):
    target = folder / "board.yaml"
    target.write_text(f"name: board\nruntime: onnxruntime\narch: x86_64\nthreads: 1\nprecisions: [fp32, int8]\n"
                      f"max_opset: 21\nhost: {host}\nedgekd_command: {json.dumps(DEVICE_EDGEKD)}\n"
                      f"budgets: {{latency_ms: {latency_ms}, max_accuracy_drop: 1.0, max_int8_drop: 0.5}}\n")
    config = folder / "tiny.yaml"
    config.write_text(TINY.replace("TARGET", str(target)))
    return config


def test_candidates_are_measured_on_the_device_before_the_teacher_trains(sshd, tmp_path, monkeypatch):
    host, opts, device = sshd
    monkeypatch.setattr(search_stage, "measure_options", lambda ctx: MeasureOptions(
        settings=QUICK, ssh_options=tuple(ctx.ssh_options), remote_dir=str(device / "{target}"), log=ctx.ui.info))
    with pytest.raises(ConfigError, match="No student.search candidate fits target 'board'") as err:
        compress(_config(tmp_path, host, 0.0001), out=tmp_path / "run", ui=UI(quiet=True), ssh_options=tuple(opts))
    assert f"on {host} over ssh" in str(err.value)
    measured = json.loads((tmp_path / "run" / search_stage.MEASURED_FILE).read_text())
    assert {j["row"]["where"] for j in measured["judged"]} == {f"{host} over ssh"} and len(measured["judged"]) == 2
    assert (device / "board" / "table.json").is_file()
    assert read_record(tmp_path / "run", "teacher") is None


def test_an_unreachable_device_stops_the_run_before_anything_is_written(sshd, tmp_path):
    host, opts, _ = sshd
    closed = list(opts)
    closed[closed.index("-p") + 1] = str(_free_port())  # nothing listens there
    with pytest.raises(ConfigError, match="Cannot reach .* for target 'board'") as err:
        compress(_config(tmp_path, host, 50.0), out=tmp_path / "run", ui=UI(quiet=True), ssh_options=tuple(closed))
    assert "Connection refused" in str(err.value)
    assert not (tmp_path / "run").exists()
