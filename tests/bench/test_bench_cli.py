"""`edgekd bench` end to end on ONNX files: a device report in the report.json schema."""

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgekd.bench.cli import bench_command, describe
from edgekd.report.merge import load_report
from tests.bench.fakerun import N_VAL

QUICK_ARGS = ["--warmup", "0.05", "--iterations", "20", "--seconds", "0.2", "--rounds", "2",
              "--batch-sizes", "1,4"]  # threads: the target's (host-cpu: 2, this machine's cores)


def test_bench_writes_a_device_report(fake_run, tmp_path):
    out = tmp_path / "device"
    args = [str(fake_run / f) for f in ("teacher.onnx", "student.onnx", "student.int8.onnx")]
    args += ["--target", "host-cpu", "--data", str(fake_run / "data" / "val.npz"), "--out", str(out), "--html"]
    result = CliRunner().invoke(bench_command, args + QUICK_ARGS, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = load_report(out / "report.json")  # also checks schema_version
    assert report["target"]["name"] == "host-cpu"
    assert report["dataset"]["samples"] == N_VAL
    assert report["machine"]["cpu"] and report["machine"]["versions"]["onnxruntime"]
    rows = {a["name"]: a for a in report["artifacts"]}
    assert list(rows) == ["teacher", "student", "student.int8"]
    assert [rows[n]["precision"] for n in rows] == ["fp32", "fp32", "int8"]  # from the sidecars
    assert [rows[n]["model"] for n in rows] == ["teacher", "student", "student"]
    assert rows["teacher"]["accuracy"] == 1.0  # labels are the teacher's predictions
    assert rows["teacher"]["speedup_vs_teacher"] == 1.0
    assert rows["teacher"]["memory_ratio_vs_teacher"] == 1.0
    for row in rows.values():
        for key in ("latency_ms", "throughput_ips", "peak_rss_mb", "load_s", "size_mb", "params", "budget",
                    "batch_sweep", "latency_samples_ms", "speedup_vs_teacher"):
            assert row[key] is not None, key
        assert row["budget"]["latency_ms"] == 50.0
        assert row["budget"]["pass"] == (row["latency_ms"]["p50"] <= 50.0 and row["peak_rss_mb"] <= 1024.0)
        assert row["budget"]["measured_on_target"] is True  # host-cpu is this x86_64 machine
    md = (out / "report.md").read_text()
    assert "| student.int8 |" in md and "host-cpu" in md
    assert (out / "report.html").stat().st_size > 10_000
    json.dumps(report)  # stays plain JSON


def test_a_target_this_machine_is_not_gets_no_latency_verdict(fake_run, tmp_path):
    out = tmp_path / "device"
    args = [str(fake_run / "student.onnx"), "--target", "rpi5", "--out", str(out)] + QUICK_ARGS
    result = CliRunner().invoke(bench_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = load_report(out / "report.json")
    budget = report["artifacts"][0]["budget"]
    assert budget["measured_on_target"] is False and budget["pass"] is None and budget["checks"] == {}
    assert "rpi5 is aarch64" in budget["not_measured_on_target"]
    # rpi5 asks for 4 threads; more than this machine's cores would time contention, not the model
    assert report["measurement"]["threads"] <= report["measurement"]["cores"]
    if report["measurement"]["cores"] < 4:
        assert "asks for 4 threads" in report["measurement"]["notes"][0]


def test_describe_falls_back_to_graph_and_name(fake_run, tmp_path):
    # No sidecar: precision comes from the graph (Q/DQ nodes), model role from the file name.
    copy = tmp_path / "student.int8.onnx"
    copy.write_bytes((fake_run / "student.int8.onnx").read_bytes())
    info = describe(copy)
    assert info == {"name": "student.int8", "model": "student", "precision": "int8", "params": info["params"]}
    # Parameters: weights and biases, not the Q/DQ scales; the fp32 twin has the same count.
    assert info["params"] == describe(fake_run / "student.onnx")["params"]


def _bench(*args):
    from edgekd.cli import main

    return CliRunner().invoke(main, ["bench", *map(str, args), *QUICK_ARGS])


def test_an_earlier_report_is_not_overwritten_without_force(fake_run, tmp_path):
    out = tmp_path / "device"
    out.mkdir()
    (out / "report.json").write_text('{"earlier": true}')
    refused = _bench(fake_run / "student.onnx", "--out", out)
    assert refused.exit_code == 2 and "already holds report.json" in refused.output and "--force" in refused.output
    assert (out / "report.json").read_text() == '{"earlier": true}'
    replaced = _bench(fake_run / "student.onnx", "--out", out, "--force")
    assert replaced.exit_code == 0, replaced.output
    assert load_report(out / "report.json")["artifacts"][0]["name"] == "student"
    again = _bench(fake_run / "student.onnx", "--out", out)  # its own lock file does not count as a report...
    assert again.exit_code == 2  # ...but the report it wrote does


@pytest.mark.parametrize("damage", ["truncated", "random"])
@pytest.mark.parametrize("onnx_installed", [True, False], ids=["onnx", "runtime-only"])
def test_a_damaged_onnx_file_exits_6(fake_run, tmp_path, monkeypatch, damage, onnx_installed):
    path = tmp_path / "student.onnx"
    good = (fake_run / "student.onnx").read_bytes()
    path.write_bytes(good[: len(good) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(len(good)))
    if not onnx_installed:  # a device with onnxruntime only: the runtime refuses it in the worker
        monkeypatch.setitem(sys.modules, "onnx", None)
    result = _bench(path, "--out", tmp_path / "out")
    assert result.exit_code == 6, result.output
    assert "student.onnx" in result.output and "internal error" not in result.output
