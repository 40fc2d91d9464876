"""The offline search as its three commands, end to end on digits, with this machine as the "device":

    edgekd search-bundle tiny.yaml bundle/        (here)
    edgekd profile bundle/ -o table.json          (on the device: a separate process, torch-free)
    student.search.latency_table: table.json      (here: the search stage reads the table, measures nothing)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.config import load_config
from edgekd.errors import ConfigError
from edgekd.pipeline import search_stage
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import run_stages
from edgekd.pipeline.search_bundle import search_bundle
from edgekd.pipeline.train_stages import DATA
from edgekd.ui import UI

from tests.pipeline.test_search_stage import _config

QUICK_PROFILE = ["--warmup", "0.02", "--iterations", "5", "--seconds", "0.02", "--rounds", "1"]


def test_bundle_profile_table_is_the_offline_search(tmp_path):
    config = _config(tmp_path)
    result = CliRunner().invoke(main, ["search-bundle", str(config), str(tmp_path / "bundle"),
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["kind"] == "search-candidates"
    assert sorted(c["name"] for c in manifest["candidates"]) == ["test_resnet-w0.5-d1-16px-fp32",
                                                                 "test_resnet-w1-d1-16px-fp32"]

    # the "device": another process running the torch-free profile command over the copied bundle
    table = tmp_path / "table.json"
    device = subprocess.run([sys.executable, "-m", "edgekd", "profile", str(tmp_path / "bundle"), "-o", str(table),
                             *QUICK_PROFILE], capture_output=True, text=True, env=os.environ.copy())
    assert device.returncode == 0, device.stderr
    entries = {e["name"]: e for e in json.loads(table.read_text())["entries"]}

    with_table = tmp_path / "with-table.yaml"
    with_table.write_text(config.read_text().replace("proxy_epochs: 1,", f"proxy_epochs: 1, latency_table: {table},"))
    ctx = RunContext(config=load_config(with_table), run_dir=tmp_path / "run", ui=UI(quiet=True))
    records = run_stages([DATA, search_stage.SEARCH], ctx, UI(quiet=True))
    assert records["search"]["result"]["cost"]["measured"] == 2  # read from the table, not timed here
    judged = json.loads((tmp_path / "run" / search_stage.MEASURED_FILE).read_text())["judged"]
    assert {j["row"]["candidate"]["name"]: j["row"]["p50_ms"] for j in judged} == {
        name: e["latency_ms"]["p50"] for name, e in entries.items()}
    assert all(j["row"]["where"].startswith("latency table") for j in judged)


def test_a_bundle_for_an_unknown_target_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="no target 'rpi5'") as err:
        search_bundle(_config(tmp_path), tmp_path / "bundle", target="rpi5", out=tmp_path / "run", ui=UI(quiet=True))
    assert "--target" in err.value.hint
    assert not (tmp_path / "run" / "data").exists()
