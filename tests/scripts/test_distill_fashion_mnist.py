"""benchmarks/distill_fashion_mnist.py: thread choice, targets judged only on finished rows, unfinished rows named."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[2]


def _load_script():
    if "distill_fashion_mnist" in sys.modules:
        return sys.modules["distill_fashion_mnist"]
    spec = importlib.util.spec_from_file_location("distill_fashion_mnist", REPO / "benchmarks" / "distill_fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["distill_fashion_mnist"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def test_threads_auto_takes_one_on_a_busy_machine_and_torchs_default_on_an_idle_one():
    assert bench.pick_threads("auto", load_average=15.0, cores=2) == 1
    assert bench.pick_threads("auto", load_average=2.0, cores=2) == 1
    assert bench.pick_threads("auto", load_average=0.3, cores=2) is None
    assert bench.pick_threads("2", load_average=15.0, cores=2) == 2  # asked for: kept


def test_threads_must_be_a_positive_number_or_auto():
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--threads", "0"])
    assert bench.parse_args(["--device", "cpu", "--threads", "3"]).threads == "3"


def _row(name, accuracy, params=85_594, alone=None):
    return {"row": name, "settings": {"s": 1}, "test_accuracy": accuracy, "params": params, "alone": alone}


def test_a_target_whose_rows_have_not_finished_is_not_judged():
    judged = bench.verdicts({"teacher": _row("teacher", 0.95, params=2_811_274)})
    assert judged["teacher >= 0.945"] is True
    assert judged["student <= 100K params >= 0.930"].startswith("not judged")
    assert judged["gain >= 1.0 point over alone, same settings"].startswith("not judged")
    assert bench.verdicts({})["teacher >= 0.945"].startswith("not judged")


def test_finished_pairs_are_judged_on_their_gain():
    rows = {"student alone": _row("student alone", 0.910), "kd": _row("kd", 0.925, alone="student alone")}
    judged = bench.verdicts(rows)
    assert judged["student <= 100K params >= 0.930"] is False
    assert judged["gain >= 1.0 point over alone, same settings"] is True
    assert rows["kd"]["gain_points"] == 1.5


def test_unfinished_rows_say_how_far_their_checkpoints_got(tmp_path):
    args = bench.parse_args(["--device", "cpu", "--preset", "cpu", "--work", str(tmp_path)])
    metrics = tmp_path / "work" / "student-alone" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("\n".join(json.dumps({"epoch": e}) for e in (1, 2, 3)) + "\n")
    missing = bench.unfinished(args, {"teacher": _row("teacher", 0.95)})
    assert "teacher" not in missing
    assert missing["student alone"] == "not run (in progress or interrupted: 3/12 epochs in --work)"
    assert missing["function matching"] == "not run"


def test_a_resumed_row_prints_its_own_epoch_count(capsys):
    progress = bench.epoch_printer("teacher", 6)
    progress(loss=0.9, val_acc=0.85, img_s=130, epoch=3, wait="1%")  # resumed after 2 finished epochs
    out = capsys.readouterr().out
    assert "epoch 3/6" in out
    assert "row ETA" in out


def test_cpu_long_changes_the_teacher_only_so_its_student_rows_compare_with_the_cpu_presets():
    cpu, long = (bench.parse_args(["--device", "cpu", "--preset", p]) for p in ("cpu", "cpu-long"))
    for kind in ("standard", "fm"):
        assert bench.train_settings(cpu, kind) == bench.train_settings(long, kind)
    assert bench.train_settings(long, "teacher").epochs > bench.train_settings(cpu, "teacher").epochs
    assert bench.train_settings(long, "teacher").ema  # still the strong recipe, only longer
    assert long.tag == "cpu_cpu-long"  # its own results files and --work: the cpu preset's rows are not reused


def test_cpu_long_teacher_is_a_narrower_resnet18_than_the_cpu_presets():
    from edgekd.models.io import build
    from edgekd.models.stats import count_params

    params = {p: count_params(build(*bench.teacher_spec(bench.parse_args(["--device", "cpu", "--preset", p]), 10)))
              for p in ("cpu", "cpu-long")}
    assert params["cpu"] == 2_811_274  # width 0.5, as the committed cpu results say
    assert 100_000 < params["cpu-long"] < params["cpu"] / 3  # width 0.25: a teacher, still far above the student


def test_only_the_distilled_rows_wait_for_the_teacher():
    waiting = {r.name for r in bench.ROWS if bench.uses_teacher(r)}
    assert waiting == {"kd", "kd + init: teacher", "function matching"}


def test_cpu_hires_changes_the_teachers_input_and_recipe_and_the_other_presets_keep_their_settings():
    hires, long = (bench.parse_args(["--device", "cpu", "--preset", p]) for p in ("cpu-hires", "cpu-long"))
    assert bench.settings(hires, "teacher")["input_size"] == 64
    assert bench.train_settings(hires, "teacher").lr == bench.train_settings(hires, "standard").lr  # the student rows' recipe
    assert bench.settings(hires, "standard")["teacher_input_size"] == 64  # a distilled row and its alone row alike
    assert bench.settings(hires, "standard")["input_size"] == 32  # the students stay at 32 px
    # presets with a 32-px teacher keep the settings their committed rows were saved under (reused by a re-run)
    assert "teacher_input_size" not in bench.settings(long, "standard")
    assert bench.settings(long, "teacher")["input_size"] == 32


def _write_idx(path: Path, array):
    import struct

    import numpy as np

    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.asarray(array, dtype=np.uint8).tobytes())  # unzipped: read without the MD5 check


def test_cpu_hires_smoke_trains_the_teacher_at_64px_and_distils_from_its_64px_logits(tmp_path, monkeypatch, single_thread):
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    for split, n in (("train", 48), ("t10k", 16)):
        _write_idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(data / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    seen = []
    predict = bench.predict_logits
    monkeypatch.setattr(bench, "predict_logits", lambda teacher, x, **kw: seen.append(tuple(x.shape[1:])) or predict(teacher, x, **kw))

    bench.main(["--device", "cpu", "--preset", "cpu-hires", "--smoke", "--threads", "1", "--data", str(data),
                "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])

    report = json.loads((tmp_path / "out" / "distill_fashion_mnist_cpu_cpu-hires_smoke.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == {"teacher", "student alone", "kd", "kd + init: teacher"}
    assert rows["teacher"]["settings"]["input_size"] == 64
    assert rows["kd"]["settings"] == rows["student alone"]["settings"]
    assert seen == [(1, 64, 64)]  # the kd rows' cached logits: the teacher on its own 64-px images
    assert report["rows_not_finished"]["function matching"] == "not run"
