import json
import re

import pytest
from click.testing import CliRunner

from edgekd.errors import DataError
from edgekd.report.merge import device_name, load_report, merge_command, merge_reports, markdown_table
from tests.bench.fakerun import fake_report


def _write(tmp_path, name, report):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


def test_rows_are_artifact_by_device():
    pi = fake_report(host="pi", device="Raspberry Pi 5 Model B Rev 1.0")
    ws = fake_report(host="workstation")
    merged = merge_reports([ws, pi], ["ws.json", "pi.json"])
    assert [d["device"] for d in merged["devices"]] == ["workstation", "Raspberry Pi 5 Model B Rev 1.0"]
    rows = merged["rows"]
    assert len(rows) == 4 * 2
    assert [(r["artifact"], r["device"]) for r in rows[:2]] == [
        ("student-fp32", "Raspberry Pi 5 Model B Rev 1.0"), ("student-fp32", "workstation")]
    int8 = next(r for r in rows if r["artifact"] == "student-int8")
    assert int8["p50_ms"] == 0.6 and int8["budget"] == "pass" and int8["target"] == "host-cpu"


def test_same_device_twice_is_told_apart():
    merged = merge_reports([fake_report(host="pi"), fake_report(host="pi")])
    assert [d["device"] for d in merged["devices"]] == ["pi", "pi (2)"]


def test_device_name_prefers_the_board_model():
    assert device_name(fake_report(host="h", device="Jetson Orin Nano")) == "Jetson Orin Nano"
    assert device_name(fake_report(host="h")) == "h"
    assert device_name({"target": {"name": "rpi5"}}) == "rpi5"


def test_markdown_table_formats_and_escapes():
    table = markdown_table([{"artifact": "a|b", "accuracy": 0.5, "p50_ms": 1.23456, "budget": "FAIL"}])
    lines = table.splitlines()
    assert lines[0].startswith("| artifact | device |")
    assert "a\\|b" in lines[2] and "0.5000" in lines[2] and "1.235" in lines[2] and "| – |" in lines[2]
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in lines]  # unescaped pipes only
    assert cells[0] == cells[1] == cells[2]


def test_cli_writes_md_and_json(tmp_path):
    a = _write(tmp_path, "a", fake_report(host="ws"))
    b = _write(tmp_path, "b", fake_report(host="pi", device="Raspberry Pi 5"))
    runner = CliRunner()
    res = runner.invoke(merge_command, [str(a), str(b), "--out", str(tmp_path / "m.md")], catch_exceptions=False)
    assert res.exit_code == 0
    md = (tmp_path / "m.md").read_text()
    assert md.count("| student-int8 |") == 2 and "Raspberry Pi 5" in md
    res = runner.invoke(merge_command, [str(a), str(b), "-o", str(tmp_path / "m.json")], catch_exceptions=False)
    assert len(json.loads((tmp_path / "m.json").read_text())["rows"]) == 8
    res = runner.invoke(merge_command, [str(a)], catch_exceptions=False)
    assert "| teacher-fp32 | ws |" in res.output


def test_bad_reports_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_report(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_report(tmp_path / "bad.json")
    with pytest.raises(DataError, match="schema_version"):
        load_report(_write(tmp_path, "old", {"schema_version": 0}))


def test_a_row_not_measured_on_its_target_is_not_a_failure(tmp_path):
    ws = fake_report(host="ws")
    ws["artifacts"][2]["budget"] = {"target": "rpi5", "measured_on_target": False, "pass": None,
                                    "checks": {"accuracy": True}}
    row = next(r for r in merge_reports([ws])["rows"] if r["artifact"] == "student-fp32")
    assert row["budget"] == "not measured on rpi5, accuracy ok"


def test_reports_of_the_previous_schema_still_merge(tmp_path):
    old = {**fake_report(host="old-pi"), "schema_version": 1}
    assert load_report(_write(tmp_path, "old", old))["schema_version"] == 1
