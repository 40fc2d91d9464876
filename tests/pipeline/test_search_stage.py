"""`edgekd compress` with `student.search` end to end on digits: every stage real, tiny settings.

Two derived candidates are measured on this host (real isolated-process timings, shortened
bench settings), proxy-distilled for one epoch on half the student's rows, and the winner is
distilled fully from its proxy checkpoint. No timing is asserted: only that what the run
chose is what it measured as fitting, and that a re-run measures and trains nothing again.
"""

import json
import shutil
from pathlib import Path

import pytest

from edgekd.bench.measure import BenchSettings
from edgekd.errors import ConfigError
from edgekd.pipeline import search_stage
from edgekd.pipeline.compress import compress, search_preview
from edgekd.config import load_config
from edgekd.pipeline.engine import read_record
from edgekd.search import MeasureOptions
from edgekd.ui import UI

TINY = """
version: 1
name: tiny-search
data: {kind: digits, input_size: 16}
teacher:
  model: test_resnet
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student:
  search: {widths: [0.5, 1.0], depths: [1.0], precisions: [fp32], proxy_epochs: 1, proxy_fraction: 0.5}
distill:
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
export: {exporter: torchscript, opset: 17}
quantize:
  max_int8_drop: 0.5
targets: [TARGET]
bench: {warmup_s: 0.02, min_iterations: 3, min_seconds: 0.02, batch_sizes: [1], rounds: 1}
"""

# real timings, just fewer of them than a search makes (SEARCH_BENCH): a test ranks, it does not publish
QUICK = BenchSettings(warmup_s=0.05, min_iterations=5, min_seconds=0.05, batch_sizes=(1,), rounds=1)


def _target(folder: Path, latency_ms: float) -> Path:
    """host-cpu with another latency budget."""
    path = folder / "budget-cpu.yaml"
    path.write_text(f"name: budget-cpu\nruntime: onnxruntime\narch: x86_64\nthreads: 1\nprecisions: [fp32, int8]\n"
                    f"max_opset: 21\nbudgets: {{latency_ms: {latency_ms}, max_accuracy_drop: 1.0, max_int8_drop: 0.5}}\n")
    return path


def _config(folder: Path, latency_ms: float = 50.0) -> Path:
    config = folder / "tiny.yaml"
    config.write_text(TINY.replace("TARGET", str(_target(folder, latency_ms))))
    return config


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    monkeypatch.setattr(search_stage, "measure_options",
                        lambda ctx: MeasureOptions(settings=QUICK, ssh_options=tuple(ctx.ssh_options), log=ctx.ui.info))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    config = _config(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_stage, "measure_options", lambda ctx: MeasureOptions(settings=QUICK, log=ctx.ui.info))
        result = compress(config, out=folder / "run", ui=UI(quiet=True))
    return config, result.run_dir


def test_the_search_chooses_a_fitting_candidate_and_the_student_continues_its_proxy(run):
    _, run_dir = run
    report = json.loads((run_dir / "report.json").read_text())
    section = report["search"]
    assert section["target"] == "budget-cpu" and section["ranking"] == "proxy"
    assert {c["name"] for c in section["candidates"]} == {"test_resnet-w0.5-d1-16px-fp32", "test_resnet-w1-d1-16px-fp32"}
    chosen = next(c for c in section["candidates"] if c["name"] == section["chosen"])
    assert chosen["fits"] and chosen["p50_ms"] <= section["limit_ms"] == pytest.approx(0.9 * 50.0)
    fitting = [c for c in section["candidates"] if c["fits"]]
    # ranked by proxy validation accuracy among the fitting ones, ties to the lower latency
    assert chosen["proxy_accuracy"] == max(c["proxy_accuracy"] for c in fitting)
    assert all(0.0 <= c["proxy_accuracy"] <= 1.0 for c in fitting)
    # the chosen architecture is the student that was distilled, starting from its proxy checkpoint
    student = read_record(run_dir, "student")
    width = chosen["width"]
    assert student["result"]["init"].startswith("the search's proxy run")
    choice = json.loads((run_dir / search_stage.CHOICE_FILE).read_text())
    assert choice["student"]["width"] == width and (run_dir / choice["proxy"]["checkpoint"]).is_file()
    assert (run_dir / "search_pareto.png").stat().st_size > 1000
    md = (run_dir / "report.md").read_text()
    assert "## Student search" in md and f"**{section['chosen']}**" in md and "search_pareto.png" in md
    assert "Student search: budget-cpu" in (run_dir / "report.html").read_text()


def test_a_rerun_measures_and_trains_nothing_again(run, tmp_path):
    config, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = {s: read_record(copy, s)["finished"] for s in ("search", "choose", "student")}
    compress(config, out=copy, ui=UI(quiet=True))
    assert {s: read_record(copy, s)["finished"] for s in before} == before


def test_a_changed_margin_remeasures_nothing_and_retrains_nothing(run, tmp_path):
    config, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    changed = tmp_path / "tiny.yaml"
    changed.write_text(config.read_text().replace("proxy_fraction: 0.5}", "proxy_fraction: 0.5, margin: 0.8}"))
    proxies = {p.name: p.stat().st_mtime_ns for p in (copy / "search").glob("proxy-*.safetensors")}
    compress(changed, out=copy, ui=UI(quiet=True))
    cost = read_record(copy, "search")["result"]["cost"]
    assert cost["measured"] == 0 and cost["reused"] == cost["measurements"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "search").glob("proxy-*.safetensors")} == proxies
    assert json.loads((copy / "report.json").read_text())["search"]["margin"] == 0.8
    # the same choice: the student is not distilled again (only the report's search section changed)
    assert read_record(copy, "student")["finished"] == read_record(run_dir, "student")["finished"]


def test_a_budget_no_candidate_meets_stops_before_the_teacher_trains(tmp_path):
    config = _config(tmp_path, latency_ms=0.0001)
    with pytest.raises(ConfigError, match="No student.search candidate fits target 'budget-cpu'") as err:
        compress(config, out=tmp_path / "run", ui=UI(quiet=True))
    assert "The fastest candidate, test_resnet-w" in str(err.value)
    assert read_record(tmp_path / "run", "teacher") is None
    assert (tmp_path / "run" / search_stage.MEASURED_FILE).is_file()  # the measurements are kept


def test_validate_previews_the_candidates(tmp_path):
    text = search_preview(load_config(_config(tmp_path)))
    assert "test_resnet-w0.5-d1-16px" in text and "test_resnet-w1-d1-16px" in text and "budget-cpu" in text
