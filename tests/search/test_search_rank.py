"""Judging against budgets and choosing: pure logic over measured rows."""

import pytest

from edgekd.errors import ConfigError
from edgekd.search.candidates import Candidate
from edgekd.search.measure import Measured
from edgekd.search.rank import Scorer, choose, judge
from edgekd.targets import Budgets, load_target


def target(name: str, latency_ms: float, memory_mb: float | None = None):
    base = load_target("host-cpu")
    return base.model_copy(update={"name": name, "budgets": Budgets(latency_ms=latency_ms, memory_mb=memory_mb)})


def row(arch: str, precision: str, p50: float, flops: int, on: str = "a", rss: float | None = 10.0) -> Measured:
    c = Candidate(f"{arch}-{precision}", arch.split("-")[0], None, None, 32, precision)
    return Measured(c, on, 1000, flops, p50, {"p50": p50}, rss, "this machine", False)


def test_fits_means_under_margin_times_each_budget():
    a = target("a", 10.0, memory_mb=100.0)
    judged = judge([row("x-32px", "fp32", 8.9, 1), row("x-32px", "int8", 9.1, 1), row("y-32px", "fp32", 1.0, 1, rss=95.0),
                    row("z-32px", "fp32", 9.0, 1, rss=None)], [a], margin=0.9)
    assert [j.fits for j in judged] == [True, False, False, True]
    assert judged[0].limit_ms == pytest.approx(9.0) and judged[0].memory_limit_mb == pytest.approx(90.0)
    assert judged[1].why_not == "p50 9.100 ms > 9 ms (0.9 x 10 ms)"
    assert judged[2].why_not == "peak memory 95.0 MB > 90 MB (0.9 x 100 MB)"


def test_flops_rank_without_a_score_and_ties_go_to_lower_latency():
    a = target("a", 10.0)
    rows = [row("small-32px", "fp32", 1.0, 100), row("big-32px", "fp32", 8.0, 900), row("big-32px", "int8", 3.0, 900),
            row("huge-32px", "fp32", 20.0, 5000)]
    chosen = choose(judge(rows, [a], 0.9))
    assert chosen["a"].candidate.name == "big-32px-int8"  # most FLOPs that fit; int8 the faster of its two


def test_a_proxy_score_ranks_and_is_asked_only_for_what_fits():
    a = target("a", 10.0)
    rows = [row("small-32px", "fp32", 1.0, 100), row("big-32px", "fp32", 8.0, 900), row("huge-32px", "fp32", 20.0, 5000)]
    asked = []

    def proxy(candidate):
        asked.append(candidate.arch_name)
        return {"small-32px": 0.91, "big-32px": 0.90, "huge-32px": 0.99}[candidate.arch_name]

    scorer = Scorer(proxy)
    assert choose(judge(rows, [a], 0.9), scorer)["a"].candidate.name == "small-32px-fp32"
    assert sorted(asked) == ["big-32px", "small-32px"] and scorer.values == {"small-32px": 0.91, "big-32px": 0.90}
    # a dict works too; equal scores: the faster wins
    tie = {"small-32px": 0.9, "big-32px": 0.9}
    assert choose(judge(rows, [a], 0.9), tie)["a"].candidate.name == "small-32px-fp32"
    with pytest.raises(KeyError, match="no proxy score for candidate big-32px"):
        choose(judge(rows, [a], 0.9), {"small-32px": 0.9})


def test_one_choice_per_target_or_one_for_all():
    a, b = target("a", 10.0), target("b", 2.0)
    rows = [row("big-32px", "fp32", 5.0, 900, "a"), row("big-32px", "int8", 3.0, 900, "a"),
            row("small-32px", "fp32", 1.0, 100, "a"),
            row("big-32px", "fp32", 4.0, 900, "b"), row("big-32px", "int8", 2.5, 900, "b"),
            row("small-32px", "fp32", 1.5, 100, "b"), row("small-32px", "int8", 0.5, 100, "b")]
    judged = judge(rows, [a, b], 0.9)
    each = choose(judged, per_target=True)
    assert {t: j.candidate.name for t, j in each.items()} == {"a": "big-32px-int8", "b": "small-32px-int8"}
    together = choose(judged, per_target=False)
    assert {t: j.candidate.name for t, j in together.items()} == {"a": "small-32px-fp32", "b": "small-32px-int8"}


def test_no_single_candidate_for_all_targets_is_an_error():
    a, b = target("a", 2.0), target("b", 2.0)
    rows = [row("x-32px", "fp32", 1.0, 1, "a"), row("x-32px", "fp32", 5.0, 1, "b"),
            row("y-32px", "fp32", 5.0, 1, "a"), row("y-32px", "fp32", 1.0, 1, "b")]
    with pytest.raises(ConfigError, match="No single student.search candidate fits every target") as info:
        choose(judge(rows, [a, b], 0.9), per_target=False)
    assert "a: x-32px-fp32 1.000 ms; b: y-32px-fp32 1.000 ms" in str(info.value)
    assert "per_target: true" in info.value.hint


def test_a_budget_no_candidate_meets_names_the_fastest():
    a = target("rpi5", 1.0, memory_mb=50.0)
    rows = [row("x-32px", "fp32", 3.0, 1), row("x-32px", "int8", 1.2, 1, rss=12.0), row("y-32px", "fp32", 2.0, 1)]
    rows = [Measured(**{**r.__dict__, "target": "rpi5"}) for r in rows]
    with pytest.raises(ConfigError) as info:
        choose(judge(rows, [a], 0.9))
    text = str(info.value)
    assert "No student.search candidate fits target 'rpi5'" in text
    assert "a fit needs p50 <= 0.9 ms and peak memory <= 45 MB" in text
    assert "The fastest candidate, x-32px-int8, runs 1.200 ms (peak memory 12.0 MB) on this machine" in text
    assert "Raise the target's budgets" in info.value.hint
