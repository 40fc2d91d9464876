"""The whole search through `run_search` on this host, and what it gives the report."""

import json

import pytest

from edgekd.errors import ConfigError
from edgekd.search import MeasureOptions, MeasurementCache, pareto_plot, run_search, search_sections
from edgekd.targets import Budgets, load_target
from tests.search.conftest import GRID, QUICK, TEACHER, calibration

PNG = b"\x89PNG\r\n\x1a\n"
KEYS = {"name", "model", "width", "depth", "input_size", "precision", "params", "flops", "p50_ms", "proxy_accuracy",
        "fits"}


def host(latency_ms: float):
    return load_target("host-cpu").model_copy(update={"threads": 1, "budgets": Budgets(latency_ms=latency_ms)})


def search(prepared, tmp_path, target, score=None):
    folder = prepared[0].path.parent  # the session's files: reused, not exported again
    return run_search(GRID, [target], default_input_size=32, folder=folder, cache_dir=tmp_path / "cache",
                      calib_x=calibration(), opset=17, exporter="torchscript", options=MeasureOptions(settings=QUICK),
                      score=score, **TEACHER)


def test_a_search_on_this_host_and_its_report_section(prepared, tmp_path):
    result = search(prepared, tmp_path, host(50.0))
    assert result.cost["measured"] == 4 and result.cost["reused"] == 0 and result.ranking == "flops"
    chosen = result.chosen["host-cpu"]
    assert chosen.candidate.arch_name == "resnet18-w0.5-d0.5-32px"  # every candidate fits: the most FLOPs wins
    [section] = search_sections(result)
    assert {"target", "budget_ms", "margin", "precision", "candidates", "chosen", "cost"} <= set(section)
    assert (section["target"], section["budget_ms"], section["margin"]) == ("host-cpu", 50.0, 0.9)
    assert section["chosen"] == chosen.candidate.name and section["precision"] == chosen.candidate.precision
    assert [c["name"] for c in section["candidates"]] == [p.name for p in prepared]
    assert all(KEYS <= set(c) and c["fits"] and c["proxy_accuracy"] is None for c in section["candidates"])
    assert section["cost"]["candidates"] == 4 and section["measured_on"] == "this machine"
    assert pareto_plot(section).startswith(PNG)
    assert b"<svg" in pareto_plot(section, fmt="svg")[:400]

    # Proxy scores rank instead of FLOPs; everything is measured already.
    scored = search(prepared, tmp_path, host(50.0), score={"resnet18-w0.25-d0.5-32px": 0.8,
                                                           "resnet18-w0.5-d0.5-32px": 0.7})
    assert scored.cost["measured"] == 0 and scored.cost["reused"] == 4
    [section] = search_sections(scored)
    assert section["ranking"] == "proxy" and section["chosen"].startswith("resnet18-w0.25-d0.5-32px")
    assert {c["proxy_accuracy"] for c in section["candidates"]} == {0.8, 0.7}
    assert pareto_plot(section).startswith(PNG)


def test_a_budget_nothing_meets_names_the_fastest_measured_candidate(prepared, tmp_path):
    search(prepared, tmp_path, host(50.0))  # measures and caches
    with pytest.raises(ConfigError, match="No student.search candidate fits target 'host-cpu'") as info:
        search(prepared, tmp_path, host(1e-4))
    assert len(MeasurementCache(tmp_path / "cache")) == 4  # the failed search kept what it measured
    # the fastest is read from the cache the first search wrote, so the message can be checked exactly
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    fastest = min(entries, key=lambda e: e["measurement"]["latency_ms"]["p50"])
    p50 = fastest["measurement"]["latency_ms"]["p50"]
    assert f"runs {p50:.3f} ms" in str(info.value) and "on this machine" in str(info.value)


def _candidate(name, p50, accuracy, fits=True, flops=1e6):
    return {"name": name, "p50_ms": p50, "proxy_accuracy": accuracy, "fits": fits, "flops": flops}


def test_the_headline_says_why_each_target_got_its_student():
    from edgekd.search.report import headline, why_chosen

    section = {"target": "rpi5", "budget_ms": 50.0, "margin": 0.9, "limit_ms": 45.0, "measured_on": "pi over ssh",
               "ranking": "proxy", "chosen": "b-int8", "per_target": True,
               "candidates": [_candidate("a-fp32", 10.0, 0.80), _candidate("b-int8", 20.0, 0.90),
                              _candidate("c-fp32", 90.0, None, fits=False)]}
    assert why_chosen(section) == ("proxy validation accuracy 0.9000 at p50 20 ms, of 2 candidates that fit: the "
                                   "most accurate that fits")
    assert "rpi5" in headline(section) and "Chosen: b-int8, proxy validation accuracy 0.9000" in headline(section)
    # one student for every target: this target's own best is named
    shared = {**section, "chosen": "a-fp32", "per_target": False}
    assert why_chosen(shared).endswith("the best single student that fits every target (per_target: false); for "
                                       "this target alone b-int8 would score higher (0.9000)")
    flops = {**section, "ranking": "flops", "chosen": "a-fp32",
             "candidates": [_candidate("a-fp32", 10.0, None, flops=5e8), _candidate("b-int8", 20.0, None, flops=1e8)]}
    assert why_chosen(flops) == "500 MFLOPs at p50 10 ms, of 2 candidates that fit: the most compute that fits"
