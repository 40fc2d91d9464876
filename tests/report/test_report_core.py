import json

import pytest

from edgekd.report.core import (ARTIFACT_KEYS, SCHEMA_VERSION, assemble, judge, measured_on, render_markdown,
                                verdict_word, write_json)
from edgekd.targets import load_target

HOST = load_target("host-cpu").model_dump(mode="json")  # x86_64 onnxruntime, 2 threads: 50 ms, 1024 MB, drop 0.02
RPI5 = load_target("rpi5").model_dump(mode="json")  # aarch64 onnxruntime, 4 threads
X86 = {"arch": "x86_64", "cores": 2, "session_target": "host-cpu", "threads": 2, "graph_optimization_level": "all"}


def row(name, model, runtime, p50, acc, rss=100.0):
    lat = {k: p50 for k in ("p50", "p90", "p99", "mean", "min", "max")} | {"std": 0.0}
    return {"name": name, "model": model, "runtime": runtime, "precision": "fp32", "path": f"{name}.onnx",
            "accuracy": acc, "latency_ms": lat, "peak_rss_mb": rss, "size_mb": 1.0, "throughput_ips": 1000 / p50}


DATASET = {"source": "x", "splits": {"train": 8, "val": 2, "test": 2}, "classes": ["a"],
           "preprocess": {"channels": 1, "input_size": 8}, "test_file": {"path": "data/test.npz", "samples": 2, "of": 2}}


@pytest.mark.parametrize(
    "p50, rss, acc, failed",
    [(10, 100, 0.98, []), (60, 100, 0.98, ["latency"]), (10, 2000, 0.98, ["memory"]), (10, 100, 0.95, ["accuracy"])],
)
def test_judge_names_each_failed_check(p50, rss, acc, failed):
    verdict = judge(row("s", "student", "onnxruntime", p50, acc, rss), HOST, 0.98, X86)
    assert [k for k, ok in verdict["checks"].items() if not ok] == failed
    assert verdict["pass"] is (not failed) and verdict["measured_on_target"] is True


def test_teacher_rows_are_not_judged_on_accuracy():
    verdict = judge(row("t", "teacher", "onnxruntime", 10, 0.5), HOST, 0.98, X86)
    assert "accuracy" not in verdict["checks"] and verdict["pass"]


@pytest.mark.parametrize("acc", [0.98, 0.5])
def test_a_target_this_host_is_not_gets_no_latency_verdict(acc):
    # 10 ms would pass rpi5's 50 ms budget if x86 timings counted: they must not.
    verdict = judge(row("s", "student", "onnxruntime", 10, acc), RPI5, 0.98, X86)
    assert verdict["measured_on_target"] is False and verdict["pass"] is None
    assert set(verdict["checks"]) == {"accuracy"} and verdict["checks"]["accuracy"] is (acc == 0.98)
    assert "aarch64" in verdict["not_measured_on_target"]
    assert verdict_word(verdict).startswith("not measured on rpi5")


def test_measured_on_names_arch_runtime_and_session_settings():
    assert measured_on(HOST, "onnxruntime", X86) is None
    assert measured_on(HOST, "pytorch", X86) is None  # the reference row stands in for a CPU target
    assert "x86_64" in measured_on(RPI5, "onnxruntime", X86)
    jetson = load_target("jetson-orin-nano").model_dump(mode="json")
    assert "runs tensorrt" in measured_on(jetson, "onnxruntime", {**X86, "arch": "aarch64"})
    four = {**HOST, "name": "four", "threads": 4}
    assert measured_on(four, "onnxruntime", {**X86, "cores": 8, "threads": 2}).endswith("asks for 4 and all")
    assert measured_on(four, "onnxruntime", X86) is None  # 4 threads capped to 2 cores: the same session


def test_assemble_judges_every_target_and_recommends_per_target(tmp_path):
    rows = [row("teacher-pytorch", "teacher", "pytorch", 4.0, 0.98, 200.0),
            row("student-fp32", "student", "onnxruntime", 1.0, 0.975, 30.0),
            row("student-int8", "student", "onnxruntime", 0.5, 0.97, 20.0)]
    report = assemble(run={"name": "r"}, targets=[HOST, RPI5], dataset=DATASET, machine={"cpu": "cpu", "cores": 2},
                      measurement=X86, rows=rows, extra={})
    student = report["artifacts"][2]
    assert student["speedup_vs_teacher"] == pytest.approx(8.0)
    assert student["memory_ratio_vs_teacher"] == pytest.approx(0.1)
    assert student["accuracy_drop_vs_teacher"] == pytest.approx(0.01)
    assert set(student["budgets"]) == {"host-cpu", "rpi5"} and student["budget"] is student["budgets"]["host-cpu"]
    assert all(k in student for k in ARTIFACT_KEYS) and report["schema_version"] == SCHEMA_VERSION == 2
    assert report["recommended"]["name"] == "student-int8"
    assert report["recommended_by_target"]["rpi5"] is None  # nothing was measured there
    write_json(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["artifacts"][2]["name"] == "student-int8"
    md = render_markdown(report)
    assert "| student-int8 |" in md and "8.0×" in md and "| budget host-cpu | budget rpi5 |" in md
    assert "not measured on rpi5, accuracy ok" in md and "**rpi5**" in md and "2 test samples" in md


def test_markdown_gives_the_commands_to_measure_on_the_device():
    report = assemble(run={"name": "r"}, targets=[RPI5], dataset=DATASET, machine={}, measurement=X86,
                      rows=[row("student-fp32", "student", "onnxruntime", 1.0, 0.9)], extra={})
    report["on_device"] = [{"target": "rpi5", "why": "measured on x86_64; rpi5 is aarch64",
                            "commands": ["edgekd ship RUN --target rpi5 --to USER@HOST:b", "edgekd bench b/x.onnx"]}]
    md = render_markdown(report)
    assert "## Measuring on rpi5" in md and "edgekd ship RUN --target rpi5" in md


def test_verdict_words():
    assert verdict_word(None) == "n/a"
    assert verdict_word({"checks": {"latency": True}, "pass": True}) == "pass"
    assert verdict_word({"checks": {"latency": False, "memory": True}, "pass": False}) == "FAIL (latency)"
    assert verdict_word({"target": "rpi5", "checks": {"accuracy": False}, "pass": None,
                         "measured_on_target": False}) == "not measured on rpi5, FAIL accuracy"


def test_assemble_refuses_rows_missing_contract_keys():
    broken = row("s", "student", "onnxruntime", 1.0, 0.9)
    del broken["size_mb"]
    with pytest.raises(ValueError, match="size_mb"):
        assemble(run={}, targets=[HOST], dataset={}, machine={}, measurement=X86, rows=[broken], extra={})
