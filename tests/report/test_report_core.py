import json

import pytest

from edgekd.report.core import ARTIFACT_KEYS, assemble, judge, render_markdown, write_json
from edgekd.targets import load_target

BUDGETS = load_target("host-cpu").budgets.model_dump()  # 50 ms, 1024 MB, drop 0.02


def row(name, model, runtime, p50, acc, rss=100.0):
    lat = {k: p50 for k in ("p50", "p90", "p99", "mean", "min", "max")} | {"std": 0.0}
    return {"name": name, "model": model, "runtime": runtime, "precision": "fp32", "path": f"{name}.onnx",
            "accuracy": acc, "latency_ms": lat, "peak_rss_mb": rss, "size_mb": 1.0, "throughput_ips": 1000 / p50}


@pytest.mark.parametrize(
    "p50, rss, acc, failed",
    [(10, 100, 0.98, []), (60, 100, 0.98, ["latency"]), (10, 2000, 0.98, ["memory"]), (10, 100, 0.95, ["accuracy"])],
)
def test_judge_names_each_failed_check(p50, rss, acc, failed):
    verdict = judge(row("s", "student", "onnxruntime", p50, acc, rss), BUDGETS, teacher_accuracy=0.98)
    assert [k for k, ok in verdict["checks"].items() if not ok] == failed
    assert verdict["pass"] is (not failed)


def test_teacher_rows_are_not_judged_on_accuracy():
    verdict = judge(row("t", "teacher", "onnxruntime", 10, 0.5), BUDGETS, teacher_accuracy=0.98)
    assert "accuracy" not in verdict["checks"] and verdict["pass"]


def test_assemble_adds_ratios_against_the_pytorch_teacher(tmp_path):
    rows = [row("teacher-pytorch", "teacher", "pytorch", 4.0, 0.98, 200.0),
            row("student-int8", "student", "onnxruntime", 0.5, 0.97, 20.0)]
    report = assemble(run={"name": "r"}, target=load_target("host-cpu").model_dump(mode="json"),
                      dataset={"source": "x", "train": 1, "val": 1, "classes": ["a"],
                               "preprocess": {"channels": 1, "input_size": 8}},
                      machine={"cpu": "cpu", "cores": 2}, rows=rows, extra={})
    student = report["artifacts"][1]
    assert student["speedup_vs_teacher"] == pytest.approx(8.0)
    assert student["memory_ratio_vs_teacher"] == pytest.approx(0.1)
    assert student["accuracy_drop_vs_teacher"] == pytest.approx(0.01)
    assert all(k in student for k in ARTIFACT_KEYS) and report["schema_version"] == 1
    write_json(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["artifacts"][1]["name"] == "student-int8"
    md = render_markdown(report)
    assert "| student-int8 |" in md and "8.0×" in md


def test_assemble_refuses_rows_missing_contract_keys():
    broken = row("s", "student", "onnxruntime", 1.0, 0.9)
    del broken["size_mb"]
    with pytest.raises(ValueError, match="size_mb"):
        assemble(run={}, target=load_target("host-cpu").model_dump(mode="json"), dataset={}, machine={},
                 rows=[broken], extra={})
