"""The ssh backend against a real sshd on 127.0.0.1 (the ship tests' fixture): candidates shipped as one
bundle, timed there by `edgekd profile`, the table pulled back; and the failures a user meets first.

Needs Debian's openssh-server, openssh-client and rsync; skipped otherwise.
"""

import shlex
import sys
from pathlib import Path

import onnxruntime
import pytest

from edgekd.errors import ConfigError, RuntimeBackendError
from edgekd.search.measure import measure_candidates, open_backends
from edgekd.search.plan import MeasureOptions, plan_targets
from edgekd.targets import load_target
from tests.search.conftest import GRID, QUICK
from tests.ship.test_ship_ssh import _free_port, pytestmark, sshd  # noqa: F401  (the loopback sshd fixture)

REPO = Path(__file__).resolve().parents[2]
DEVICE_EDGEKD = f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m edgekd"


def board(host: str, command: str = DEVICE_EDGEKD):
    return load_target("host-cpu").model_copy(update={"name": "board", "threads": 1, "host": host,
                                                      "edgekd_command": command})


def options(opts, device: Path, log=lambda _: None) -> MeasureOptions:
    return MeasureOptions(settings=QUICK, ssh_options=tuple(opts), remote_dir=str(device / "{target}"), log=log)


def test_candidates_are_measured_on_the_device_and_cached(sshd, prepared, tmp_path):
    host, opts, device = sshd
    said = []
    backends = open_backends(plan_targets(GRID, [board(host)], 32), options(opts, device, said.append))
    runtime = backends["board"].runtime
    assert (runtime.name, runtime.version) == ("onnxruntime", onnxruntime.__version__)
    first = measure_candidates(prepared[:2], backends, tmp_path)
    assert (first.measured, first.reused) == (2, 0)
    assert [r.candidate.name for r in first.rows] == [p.name for p in prepared[:2]]
    assert all(r.p50_ms > 0 and r.where == f"{host} over ssh" for r in first.rows)
    assert (device / "board" / "bundle" / "manifest.json").is_file() and (device / "board" / "table.json").is_file()
    assert any(line.startswith(f"{host}: measured 2 more: ") for line in said)  # the device's progress, streamed
    # A re-run measures nothing; a new candidate alone is shipped and timed.
    again = measure_candidates(prepared[:3], backends, tmp_path)
    assert (again.measured, again.reused) == (1, 2)
    assert [r.p50_ms for r in again.rows[:2]] == [r.p50_ms for r in first.rows]


def test_an_unreachable_device_names_the_ssh_command_and_its_message(sshd, tmp_path):
    host, opts, _ = sshd
    closed = list(opts)
    closed[closed.index("-p") + 1] = str(_free_port())  # nothing listens there
    with pytest.raises(ConfigError, match="Cannot reach .* for target 'board'") as info:
        open_backends(plan_targets(GRID, [board(host)], 32), options(closed, tmp_path))
    text = str(info.value)
    assert "`ssh -F /dev/null" in text and "profile --probe'` failed (exit 255)" in text
    assert "Connection refused" in text and "without a password prompt" in info.value.hint


def test_a_device_without_onnxruntime_gets_the_install_command(sshd, tmp_path):
    host, opts, device = sshd
    block = tmp_path / "no-ort"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['onnxruntime'] = None\n")
    command = f"env PYTHONPATH={block}:{REPO} {sys.executable} -m edgekd"
    with pytest.raises(RuntimeBackendError, match="has no onnxruntime") as info:
        open_backends(plan_targets(GRID, [board(host, command)], 32), options(opts, device))
    assert 'pip install "edgekd[ort]"' in info.value.hint


def test_a_device_without_edgekd_says_how_to_install_it(sshd, tmp_path):
    host, opts, device = sshd
    with pytest.raises(RuntimeBackendError, match="edgekd does not start on .* with `/nowhere/edgekd`") as info:
        open_backends(plan_targets(GRID, [board(host, "/nowhere/edgekd")], 32), options(opts, device))
    assert "edgekd_command" in info.value.hint and "edgekd[ort]" in info.value.hint


def test_a_jetson_without_tensorrt_is_refused_when_its_device_is_probed(sshd, tmp_path):
    host, opts, _ = sshd
    jetson = load_target("jetson-orin-nano").model_copy(update={"host": host, "edgekd_command": DEVICE_EDGEKD})
    search = GRID.model_copy(update={"precisions": ["int8"]})
    with pytest.raises(RuntimeBackendError, match=f"{host} \\(target 'jetson-orin-nano'\\) has no TensorRT") as info:
        open_backends(plan_targets(search, [jetson], 32), options(opts, tmp_path))
    assert "python3-libnvinfer" in info.value.hint
