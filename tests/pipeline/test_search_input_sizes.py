"""Several `student.search.input_sizes` in one `edgekd compress` (issue #15): digits, a 16-px teacher,
candidates at 16 and 8 px, every stage real, tiny settings.

The data stage writes the 8-px student's view beside the 16-px files (data/student-8px/); a budget that only
the 8-px candidate meets chooses it, its proxy trains and scores on the 8-px view, and what follows (student,
export parity, INT8, bench, report, ship) runs at 8 px while the teacher keeps its 16-px files. The budget is set
from the run's own measurements (a changed budget re-measures nothing), so each size is forced without a
timing assumption beyond "the 8-px candidate measured faster than the 16-px one".
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekd.bench.measure import BenchSettings
from edgekd.config import load_config
from edgekd.models.io import read_checkpoint
from edgekd.pipeline import search_stage
from edgekd.pipeline.compress import compress, search_preview
from edgekd.pipeline.engine import read_record
from edgekd.pipeline.records import STAGE_ORDER
from edgekd.search import MeasureOptions
from edgekd.ui import UI

CONFIG = """
version: 1
name: sizes
data: {kind: digits, input_size: 16}
teacher:
  model: test_resnet
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
student:
  search: {widths: [1.0], depths: [1.0], input_sizes: [16, 8], precisions: [fp32], proxy_epochs: PROXY,
           proxy_fraction: 0.5}
distill:
  train: {epochs: 1, batch_size: 128, lr: 0.01, warmup_epochs: 0}
export: {exporter: torchscript, opset: 17}
quantize: {max_int8_drop: 1.0}
targets: [TARGET]
bench: {warmup_s: 0.01, min_iterations: 2, min_seconds: 0.01, batch_sizes: [1], rounds: 1}
"""

QUICK = BenchSettings(warmup_s=0.05, min_iterations=5, min_seconds=0.05, batch_sizes=(1,), rounds=1)
NAMES = {16: "test_resnet-w1-d1-16px", 8: "test_resnet-w1-d1-8px"}


def _config(folder: Path, latency_ms: float, proxy_epochs: int) -> Path:
    target = folder / "budget-cpu.yaml"  # the name keys the measurements, the budget does not
    target.write_text("name: budget-cpu\nruntime: onnxruntime\narch: x86_64\nthreads: 1\nprecisions: [fp32, int8]\n"
                      f"max_opset: 21\nbudgets: {{latency_ms: {latency_ms}, max_accuracy_drop: 1.0, "
                      "max_int8_drop: 1.0}\n")
    config = folder / "sizes.yaml"
    config.write_text(CONFIG.replace("TARGET", str(target)).replace("PROXY", str(proxy_epochs)))
    return config


def _input_dims(path) -> list:
    return [d.dim_value or d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]


def _compress(config: Path, run_dir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_stage, "measure_options", lambda ctx: MeasureOptions(settings=QUICK, log=ctx.ui.info))
        return compress(config, out=run_dir, ui=UI(quiet=True))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A generous budget ranked by FLOPs (the 16-px candidate wins), then the same run directory with a budget
    between the two measured latencies and proxy ranking (only the 8-px candidate fits)."""
    folder = tmp_path_factory.mktemp("sizes")
    wide = folder / "wide"
    _compress(_config(folder, 50.0, proxy_epochs=0), wide)
    candidates = json.loads((wide / "report.json").read_text())["search"]["candidates"]
    p50 = {size: next(c["p50_ms"] for c in candidates if c["name"] == f"{name}-fp32") for size, name in NAMES.items()}
    if not p50[8] < p50[16]:
        pytest.skip(f"the 8-px candidate did not measure faster than the 16-px one here ({p50}): no budget between")
    narrow = folder / "narrow"
    shutil.copytree(wide, narrow)
    (folder / "n").mkdir()
    budget = (p50[8] + p50[16]) / 2 / 0.9  # margin 0.9: the limit falls between the two
    config = _config(folder / "n", budget, proxy_epochs=1)
    _compress(config, narrow)
    return {"wide": wide, "narrow": narrow, "narrow_config": config, "p50": p50}


def _chosen(run_dir: Path) -> dict:
    section = json.loads((run_dir / "report.json").read_text())["search"]
    return next(c for c in section["candidates"] if c["name"] == section["chosen"])


def test_a_generous_budget_keeps_the_teachers_size(runs):
    run_dir = runs["wide"]
    chosen = _chosen(run_dir)
    assert chosen["input_size"] == 16 and {c["input_size"] for c in
                                           json.loads((run_dir / "report.json").read_text())["search"]["candidates"]} == {16, 8}
    assert _input_dims(run_dir / "student.onnx")[1:] == [1, 16, 16]
    # the 8-px view was written by the data stage all the same, row for row the same samples
    with np.load(run_dir / "data/student-8px/val.npz") as small, np.load(run_dir / "data/val.npz") as own:
        assert small["x"].shape[1:] == (1, 8, 8) and own["x"].shape[1:] == (1, 16, 16)
        assert np.array_equal(small["y"], own["y"])


def test_a_budget_only_the_smaller_size_meets_distils_exports_and_benches_at_that_size(runs):
    run_dir = runs["narrow"]
    chosen = _chosen(run_dir)
    assert chosen["name"] == f"{NAMES[8]}-fp32" and chosen["fits"] and chosen["input_size"] == 8
    assert chosen["p50_ms"] == pytest.approx(runs["p50"][8])  # the measurement of the first run, reused
    cost = read_record(run_dir, "search")["result"]["cost"]
    assert cost["measured"] == 0 and cost["reused"] == cost["measurements"]
    # the proxy trained on the 8-px view; the student continued it at 8 px
    choice = json.loads((run_dir / search_stage.CHOICE_FILE).read_text())
    proxy = read_checkpoint(run_dir / choice["proxy"]["checkpoint"])
    assert proxy["preprocess"]["input_size"] == 8
    student = read_checkpoint(run_dir / "student.safetensors")
    assert student["preprocess"]["input_size"] == 8 and student["metrics"]["init"].startswith("the search's proxy")
    # export and INT8 at 8 px; the teacher keeps its 16-px input
    assert _input_dims(run_dir / "student.onnx")[1:] == [1, 8, 8]
    assert _input_dims(run_dir / "teacher.onnx")[1:] == [1, 16, 16]
    int8 = [a for a in read_record(run_dir, "quantize")["result"]["artifacts"]]
    assert int8 and all(_input_dims(run_dir / a["path"])[1:] == [1, 8, 8] for a in int8)
    # bench scored every student file on the 8-px test file, the teacher on its own
    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"]["test_file"]["path"] == "data/student-8px/test.npz"
    assert report["run"]["config"]["student"]["input_size"] == 8
    students = [a for a in report["artifacts"] if a["model"] == "student"]
    assert students and all(a["accuracy"] is not None and 0.0 <= a["accuracy"] <= 1.0 for a in students)
    md = (run_dir / "report.md").read_text()
    assert "teacher 1×16×16, student 1×8×8" in md and "takes 8x8 px inputs (searched: 16 px, 8 px)" in md
    assert (run_dir / "search_pareto.png").stat().st_size > 1000


def test_the_chosen_size_ships(runs, tmp_path):
    from edgekd.ship import ship
    from edgekd.ship.verify import verify_bundle
    from edgekd.targets import load_target

    target = load_target(str(runs["narrow_config"].parent / "budget-cpu.yaml"))
    ship(runs["narrow"], target, str(tmp_path / "bundle"))
    assert np.load(tmp_path / "bundle/golden/inputs.npy").shape[1:] == (1, 8, 8)
    with np.load(tmp_path / "bundle/data/test.npz") as test:
        assert test["x"].shape[1:] == (1, 8, 8)
    assert verify_bundle(tmp_path / "bundle").models


def test_a_rerun_measures_trains_and_exports_nothing_again(runs, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(runs["narrow"], copy)
    before = {s: (read_record(copy, s) or {}).get("finished") for s in STAGE_ORDER}
    _compress(runs["narrow_config"], copy)
    assert {s: (read_record(copy, s) or {}).get("finished") for s in STAGE_ORDER} == before


def test_validate_previews_the_candidates_of_each_size(tmp_path):
    text = search_preview(load_config(_config(tmp_path, 50.0, proxy_epochs=0)))
    assert NAMES[16] in text and NAMES[8] in text
    assert "input sizes: 16 px on the student's data/ files; 8 px on its own view of each sample (data/student-8px/)" in text


def test_one_student_per_target_each_at_its_winners_size(tmp_path):
    """per_target: a loose target keeps the 16-px candidate (FLOPs), a tight one gets the 8-px candidate in its
    own sub-run (students/<arch>/), trained, exported and scored at 8 px from the shared data stage's files."""
    from edgekd.errors import ConfigError

    def target(name: str, latency_ms: float) -> Path:  # a new file per budget: profiles are cached per path
        path = tmp_path / f"{name}-{latency_ms:.6g}.yaml"
        path.write_text(f"name: {name}\nruntime: onnxruntime\narch: x86_64\nthreads: 1\nprecisions: [fp32]\n"
                        f"max_opset: 21\nbudgets: {{latency_ms: {latency_ms}, max_accuracy_drop: 1.0}}\n")
        return path

    def config(b_ms: float) -> Path:
        path = tmp_path / f"per-target-{b_ms:.6g}.yaml"
        path.write_text(CONFIG.replace("PROXY", "0").replace("quantize: {max_int8_drop: 1.0}", "quantize: {enabled: false}")
                        .replace("TARGET", f"{target('budget-a', 10000.0)}, {target('budget-b', b_ms)}"))
        return path

    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="budget-b"):  # measures every candidate, stops before the teacher
        _compress(config(0.0001), run_dir)
    judged = json.loads((run_dir / search_stage.MEASURED_FILE).read_text())["judged"]
    p50 = {j["row"]["candidate"]["input_size"]: j["row"]["p50_ms"] for j in judged if j["row"]["target"] == "budget-b"}
    if not p50[8] < p50[16]:
        pytest.skip(f"the 8-px candidate did not measure faster here ({p50})")
    _compress(config((p50[8] + p50[16]) / 2 / 0.9), run_dir)
    sub = run_dir / "students" / NAMES[8]
    assert _input_dims(run_dir / "student.onnx")[1:] == [1, 16, 16]
    assert _input_dims(sub / "student.onnx")[1:] == [1, 8, 8]
    assert json.loads((sub / "report.json").read_text())["dataset"]["test_file"]["path"] == "data/student-8px/test.npz"
    rows = {r["target"]: r for r in json.loads((run_dir / "report.json").read_text())["students"]}
    assert rows["budget-a"]["student"] == NAMES[16] and rows["budget-b"]["student"] == NAMES[8]
