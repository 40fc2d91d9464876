"""Which candidates fit each target's budget, and which one to distil.

    judged = judge(rows, targets, margin=0.9)
    chosen = choose(judged, score=None | {arch_name: accuracy} | callable(Candidate) -> float, per_target=True)
        -> {target name: Judged}

A measured candidate fits when p50 <= margin x budgets.latency_ms and, where the
target has a memory budget, peak RSS <= margin x budgets.memory_mb. Among those
that fit, the highest score wins (proxy validation accuracy; FLOPs when no score
is given: the most compute that still fits), ties going to the lower latency.
`score` is called only for candidates that fit, so a proxy distillation runs only
where it can matter. Torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

from edgekd.errors import ConfigError
from edgekd.search.candidates import Candidate
from edgekd.search.measure import Measured

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

Score = Union[Callable[[Candidate], float], dict, None]
FIX_HINT = ("Raise the target's budgets, add smaller candidates (lower widths or depths, smaller input_sizes, a "
            "smaller timm model), or raise student.search.margin (at most 1).")


@dataclass(frozen=True)
class Judged:
    row: Measured
    limit_ms: float  # margin x latency budget
    memory_limit_mb: float | None
    fits: bool
    why_not: str | None  # what missed, when it does not fit

    @property
    def candidate(self) -> Candidate:
        return self.row.candidate


def judge(rows: list[Measured], targets: list["TargetProfile"], margin: float) -> list[Judged]:
    by_name = {t.name: t for t in targets}
    return [_judge(r, by_name[r.target], margin) for r in rows]


def _judge(row: Measured, target: "TargetProfile", margin: float) -> Judged:
    limit = margin * target.budgets.latency_ms
    memory = margin * target.budgets.memory_mb if target.budgets.memory_mb else None
    misses = []
    if row.p50_ms > limit:
        misses.append(f"p50 {row.p50_ms:.3f} ms > {limit:.3g} ms ({margin:g} x {target.budgets.latency_ms:g} ms)")
    if memory is not None and row.peak_rss_mb is not None and row.peak_rss_mb > memory:
        misses.append(f"peak memory {row.peak_rss_mb:.1f} MB > {memory:.4g} MB ({margin:g} x "
                      f"{target.budgets.memory_mb:g} MB)")
    return Judged(row, limit, memory, not misses, "; ".join(misses) or None)


def score_of(score: Score, candidate: Candidate, flops: int) -> float:
    """The candidate's score: FLOPs without `score`, else the dict entry (arch name, else name) or call."""
    if score is None:
        return float(flops)
    if callable(score):
        return float(score(candidate))
    for key in (candidate.arch_name, candidate.name):
        if key in score:
            return float(score[key])
    raise KeyError(f"no proxy score for candidate {candidate.arch_name}")


def choose(judged: list[Judged], score: "Score | Scorer" = None, per_target: bool = True) -> dict[str, Judged]:
    """The chosen candidate per target; ConfigError when a target (or, per_target=False, all) has none.
    Pass a `Scorer` to read the scores back."""
    targets = check_fits(judged, per_target)
    scores = score if isinstance(score, Scorer) else Scorer(score)
    if per_target:
        return {t: _best([j for j in judged if j.row.target == t and j.fits], scores) for t in targets}
    return _best_for_all(judged, targets, scores)


def check_fits(judged: list[Judged], per_target: bool = True) -> list[str]:
    """The targets, in order, when a choice exists: every target has a candidate that fits (and, with
    per_target=False, one architecture fits them all). ConfigError otherwise, before anything is scored."""
    targets = list(dict.fromkeys(j.row.target for j in judged))
    for t in targets:
        mine = [j for j in judged if j.row.target == t]
        if not any(j.fits for j in mine):
            raise _nothing_fits(t, mine)
    if not per_target and not _common_architectures(judged, targets):
        raise _no_common_fit(judged, targets)
    return targets


class Scorer:
    """Scores each architecture once (one proxy run per architecture, whatever its precisions);
    keeps the values (`values`: arch_name -> score) and the seconds spent computing them."""

    def __init__(self, score: Score):
        self.score, self.values, self.seconds = score, {}, 0.0

    def __call__(self, j: Judged) -> float:
        name = j.candidate.arch_name
        if name not in self.values:
            t0 = time.perf_counter()
            self.values[name] = score_of(self.score, j.candidate, j.row.flops)
            self.seconds += time.perf_counter() - t0
        return self.values[name]


def _best(fitting: list[Judged], scores: Scorer) -> Judged:
    return min(fitting, key=lambda j: (-scores(j), j.row.p50_ms, j.candidate.name))


def _best_for_all(judged: list[Judged], targets: list[str], scores: Scorer) -> dict[str, Judged]:
    """The architecture that fits every target (in some precision each), best score, then lowest worst-case
    latency relative to each target's limit."""
    options = []
    for arch, picks in _common_architectures(judged, targets).items():
        worst = max(j.row.p50_ms / j.limit_ms for j in picks.values())
        options.append((-scores(next(iter(picks.values()))), worst, arch, picks))
    if not options:
        raise _no_common_fit(judged, targets)
    return min(options, key=lambda o: o[:3])[3]


def _common_architectures(judged: list[Judged], targets: list[str]) -> dict[str, dict[str, Judged]]:
    """arch_name -> {target: its fastest fitting precision there}, for the architectures that fit every target."""
    out = {}
    for arch in dict.fromkeys(j.candidate.arch_name for j in judged):
        per = {t: [j for j in judged if j.candidate.arch_name == arch and j.row.target == t and j.fits] for t in targets}
        if all(per.values()):
            out[arch] = {t: min(js, key=lambda j: j.row.p50_ms) for t, js in per.items()}
    return out


def _no_common_fit(judged: list[Judged], targets: list[str]) -> ConfigError:
    best_each = {t: min((j for j in judged if j.row.target == t and j.fits), key=lambda j: j.row.p50_ms)
                 for t in targets}
    return ConfigError(
        "No single student.search candidate fits every target (per_target: false). Fastest that fits each: "
        + "; ".join(f"{t}: {j.candidate.name} {j.row.p50_ms:.3f} ms" for t, j in best_each.items()) + ".",
        "Set student.search.per_target: true (one student per target), or " + FIX_HINT[0].lower() + FIX_HINT[1:],
    )


def _nothing_fits(target: str, rows: list[Judged]) -> ConfigError:
    fastest = min(rows, key=lambda j: j.row.p50_ms)
    memory = f" (peak memory {fastest.row.peak_rss_mb:.1f} MB)" if fastest.row.peak_rss_mb is not None else ""
    budget = f"p50 <= {fastest.limit_ms:.3g} ms"
    if fastest.memory_limit_mb is not None:
        budget += f" and peak memory <= {fastest.memory_limit_mb:.4g} MB"
    return ConfigError(
        f"No student.search candidate fits target {target!r}: a fit needs {budget} (margin x budget). The fastest "
        f"candidate, {fastest.candidate.name}, runs {fastest.row.p50_ms:.3f} ms{memory} on {fastest.row.where}"
        f" ({fastest.why_not}).",
        FIX_HINT,
    )
