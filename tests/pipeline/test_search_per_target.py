"""`student.search` with `per_target: true` and two targets whose winners differ: one student per target.

Both targets are this host (x86_64 ONNX Runtime, 1 thread) with different latency budgets. A first run with
a budget nothing meets stops after measuring; then target b's budget is set between its two measured
candidates (the measurements are cached, so its choice is decided, not timed again): a keeps the larger
candidate (FLOPs ranking, loose budget) and b gets the smaller one in students/<arch>/. No timing is asserted.
"""

import json
import shutil
from pathlib import Path

import pytest

from edgekd.bench.measure import BenchSettings
from edgekd.errors import ConfigError
from edgekd.pipeline import search_stage
from edgekd.pipeline.compress import compress
from edgekd.pipeline.engine import read_record
from edgekd.pipeline.records import target_run_dir
from edgekd.search import MeasureOptions
from edgekd.ship import ship
from edgekd.targets import load_target
from edgekd.ui import UI

CONFIG = """
version: 1
name: per-target
data: {kind: digits, input_size: 32}
teacher:
  model: test_resnet
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student:
  search: {widths: [0.25, 1.0], depths: [1.0], precisions: [fp32], proxy_epochs: 0}
distill:
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
export: {exporter: torchscript, opset: 17}
quantize: {enabled: false}
targets: [A, B]
bench: {warmup_s: 0.02, min_iterations: 3, min_seconds: 0.02, batch_sizes: [1], rounds: 1}
"""
QUICK = BenchSettings(warmup_s=0.05, min_iterations=5, min_seconds=0.05, batch_sizes=(1,), rounds=1)
SMALL, LARGE = "test_resnet-w0.25-d1-32px", "test_resnet-w1-d1-32px"
SUB = f"students/{SMALL}"


def _target(folder: Path, name: str, latency_ms: float) -> Path:
    # a new file per budget: profiles are read once per process (edgekd.targets), a CLI run is a new process
    path = folder / f"{name}-{latency_ms:.6g}.yaml"
    path.write_text(f"name: {name}\nruntime: onnxruntime\narch: x86_64\nthreads: 1\nprecisions: [fp32]\n"
                    f"max_opset: 21\nbudgets: {{latency_ms: {latency_ms}, max_accuracy_drop: 1.0}}\n")
    return path


def _config(folder: Path, a: Path, b: Path) -> Path:
    config = folder / "model.yaml"
    config.write_text(CONFIG.replace("A, B", f"{a}, {b}"))
    return config


def _compress(config: Path, out: Path) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_stage, "measure_options", lambda ctx: MeasureOptions(settings=QUICK, log=ctx.ui.info))
        return compress(config, out=out, ui=UI(quiet=True)).summary()


def _between(run_dir: Path, target: str) -> float:
    """A budget whose limit (margin 0.9) lies between `target`'s two measured p50s."""
    judged = json.loads((run_dir / search_stage.MEASURED_FILE).read_text())["judged"]
    p50 = {j["row"]["candidate"]["name"].removesuffix("-fp32"): j["row"]["p50_ms"] for j in judged
           if j["row"]["target"] == target}
    if not p50[SMALL] < p50[LARGE]:  # width 0.25 has 1/16 of the FLOPs; a load spike could still reorder them
        pytest.skip(f"the smaller candidate measured slower ({p50}): no budget separates them")
    return (p50[SMALL] + p50[LARGE]) / 2 / 0.9


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("per-target")
    a, run_dir = _target(folder, "budget-a", 10000.0), folder / "run"
    # first a budget nothing meets: the run stops after the search stage, its measurements kept
    with pytest.raises(ConfigError, match="No student.search candidate fits target 'budget-b'"):
        _compress(_config(folder, a, _target(folder, "budget-b", 1e-6)), run_dir)
    b = _target(folder, "budget-b", _between(run_dir, "budget-b"))
    config = _config(folder, a, b)
    summary = _compress(config, run_dir)
    assert f"budget-b: {SMALL} in {SUB}/" in summary and f"budget-a: {LARGE} in ./" in summary
    return config, (a, b), run_dir


def test_each_target_gets_its_own_student_and_report_row(runs):
    _, _, run_dir = runs
    students = read_record(run_dir, "choose")["result"]["students"]
    assert students == [{"arch_name": LARGE, "targets": ["budget-a"], "choice": search_stage.CHOICE_FILE},
                        {"arch_name": SMALL, "targets": ["budget-b"], "choice": search_stage.other_choice_file(SMALL)}]
    main, sub = (json.loads((d / "report.json").read_text()) for d in (run_dir, run_dir / SUB))
    assert [t["name"] for t in main["targets"]] == ["budget-a"] and [t["name"] for t in sub["targets"]] == ["budget-b"]
    # each student is its winner's architecture (the sub-run's from its own choice.json)
    assert read_record(run_dir / SUB, "student")["result"]["arch_kwargs"] != read_record(run_dir, "student")["result"]["arch_kwargs"]
    rows = {r["target"]: r for r in main["students"]}
    assert (rows["budget-a"]["student"], rows["budget-a"]["run"]) == (LARGE, ".")
    assert (rows["budget-b"]["student"], rows["budget-b"]["run"]) == (SMALL, SUB)
    for target, report in (("budget-a", main), ("budget-b", sub)):  # each row from its own student's report
        own = next(a for a in report["artifacts"] if a["name"] == rows[target]["artifact"])
        assert rows[target]["p50_ms"] == own["latency_ms"]["p50"] and own["model"] == "student"
        assert rows[target]["budget_ms"] == report["targets"][0]["budgets"]["latency_ms"]
    assert "## One student per target" in (run_dir / "report.md").read_text()
    assert "One student per target" in (run_dir / "report.html").read_text()
    # data, teacher and measurements made once: the search measured nothing new on the second run, the sub-run
    # has the run directory's data and teacher files and records (never a stage of its own) and its cache
    assert read_record(run_dir, "search")["result"]["cost"]["measured"] == 0
    for stage in ("data", "teacher"):
        record = read_record(run_dir, stage)
        assert read_record(run_dir / SUB, stage) == record and record["outputs"]
        assert all((run_dir / SUB / rel).read_bytes() == (run_dir / rel).read_bytes() for rel in record["outputs"])
    assert (run_dir / SUB / "cache").resolve() == (run_dir / "cache").resolve()


def test_a_rerun_reuses_everything_and_a_changed_budget_reruns_only_its_student(runs, tmp_path):
    config, files, run_dir = runs
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    stages = ("student", "export", "bench", "report")
    def finished(d):
        return {s: (read_record(d, s) or {}).get("finished") for s in stages}
    before = {d: finished(copy / d) for d in (".", SUB)}
    _compress(config, copy)
    assert {d: finished(copy / d) for d in (".", SUB)} == before
    # b's budget moves: b's run measures and reports again; of a's run only the report (it lists b's row) re-runs
    a, b = files
    moved = _target(b.parent, "budget-b", load_target(str(b)).budgets.latency_ms * 1.01)
    _compress(_config(tmp_path, a, moved), copy)
    after = {d: finished(copy / d) for d in (".", SUB)}
    assert {s: after["."][s] == before["."][s] for s in stages} == {"student": True, "export": True, "bench": True,
                                                                    "report": False}
    # b's student is not distilled again (export reads the whole target profiles, so it re-exports the same weights)
    assert after[SUB]["student"] == before[SUB]["student"]
    assert after[SUB]["bench"] != before[SUB]["bench"] and after[SUB]["report"] != before[SUB]["report"]
    assert json.loads((copy / "report.json").read_text())["students"][1]["budget_ms"] == load_target(str(moved)).budgets.latency_ms


def test_ship_takes_each_targets_own_student(runs, tmp_path):
    _, (_, b), run_dir = runs
    assert target_run_dir(run_dir, "budget-b") == run_dir / SUB and target_run_dir(run_dir, "budget-a") == run_dir
    result = ship(run_dir, load_target(str(b)), str(tmp_path / "bundle"))
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    shipped = (tmp_path / "bundle" / "student.onnx").read_bytes()
    assert result.models and shipped == (run_dir / SUB / "student.onnx").read_bytes() != (run_dir / "student.onnx").read_bytes()
    assert manifest["target"]["name"] == "budget-b"
    check = result.local_check  # the golden outputs were re-run from the bundle and matched
    assert check.golden_skipped is None and all(m.samples > 0 for m in check.models)
