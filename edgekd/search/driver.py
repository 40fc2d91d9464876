"""The whole search as plain functions: plan, probe, build, measure, judge, then rank.

    result = run_search(search, targets, teacher_arch="resnet18", teacher_kwargs={"num_classes": 10, "in_chans": 3},
                        default_input_size=224, folder=run_dir / "search", cache_dir=run_dir / "cache" / "search",
                        calib_x=calib_x, opset=17)
    result.chosen["rpi5"].candidate -> Candidate(name="resnet18-w0.5-d1-224px-int8", ...)

`run_search` is `measure_search` (devices probed and latency tables checked
first, so a bad device or table fails before any export; then every candidate
measured and judged) followed by `rank_search` (the candidates that fit ranked by
`score`, see edgekd.search.rank; FLOPs without it). The pipeline runs the two
apart, measuring before the teacher is trained and ranking after
(edgekd.pipeline.search_stage); `SearchMeasurement.to_json` carries the first
half's result across.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.search.cache import RuntimeInfo
from edgekd.search.candidates import Candidate, expand_grid, prepare_candidates
from edgekd.search.config import SearchConfig
from edgekd.search.measure import Measured, measure_candidates, open_backends
from edgekd.search.plan import MeasureBackend, MeasureOptions, TargetPlan, plan_targets
from edgekd.search.rank import Judged, Score, Scorer, check_fits, choose, judge

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

MEASUREMENT_FORMAT = "edgekd.search-measurement-set/1"


@dataclass
class SearchMeasurement:
    """Every candidate measured and judged on every target: the search before ranking."""

    search: SearchConfig
    plans: list[TargetPlan]
    judged: list[Judged]  # every candidate on every target
    runtimes: dict[str, RuntimeInfo]  # target name -> where its numbers come from
    cost: dict = field(default_factory=dict)  # candidates, architectures, measurements, measured, reused, *_s

    def to_json(self) -> dict:
        return {"format": MEASUREMENT_FORMAT, "search": self.search.model_dump(mode="json"),
                "plans": [_plan_json(p) for p in self.plans], "judged": [_judged_json(j) for j in self.judged],
                "runtimes": {k: asdict(v) for k, v in self.runtimes.items()}, "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict) -> "SearchMeasurement":
        return cls(SearchConfig.model_validate(data["search"]), [_plan_from(p) for p in data["plans"]],
                   [_judged_from(j) for j in data["judged"]],
                   {k: RuntimeInfo(**v) for k, v in data["runtimes"].items()}, data["cost"])


@dataclass
class SearchResult:
    search: SearchConfig
    plans: list[TargetPlan]
    judged: list[Judged]  # every candidate on every target
    chosen: dict[str, Judged]  # target name -> the winner there
    ranking: str  # "proxy" (a score was given) | "flops"
    scores: dict[str, float]  # arch_name -> score, for the architectures that were scored (those that fit)
    runtimes: dict[str, RuntimeInfo]  # target name -> where its numbers come from
    cost: dict = field(default_factory=dict)  # counts and seconds: candidates, measured, reused, *_s


def measure_search(
    search: SearchConfig,
    targets: list["TargetProfile"],
    *,
    teacher_arch: str,
    teacher_kwargs: dict,
    default_input_size: int,
    folder: str | Path,
    cache_dir: str | Path,
    calib_x: np.ndarray | None,
    opset: int,
    exporter: str = "auto",
    dynamic_batch: bool = True,
    teacher_name: str | None = None,
    hosts: dict[str, str] | None = None,
    options: MeasureOptions = MeasureOptions(),
    backends: dict[str, MeasureBackend] | None = None,
) -> SearchMeasurement:
    """Plan -> open backends -> expand -> export/quantize -> measure (cached) -> judge."""
    plans = plan_targets(search, targets, default_input_size, hosts)
    backends = backends or open_backends(plans, options)
    precisions = list(dict.fromkeys(p for plan in plans for p in plan.precisions))
    candidates = expand_grid(search, teacher_name or teacher_arch, precisions, default_input_size)
    t0 = time.perf_counter()
    prepared = prepare_candidates(candidates, teacher_arch, teacher_kwargs, folder, calib_x, opset=opset,
                                  exporter=exporter, dynamic_batch=dynamic_batch, schemes=int8_schemes(plans),
                                  log=options.log)
    prepare_s = time.perf_counter() - t0
    measured = measure_candidates(prepared, backends, cache_dir)
    cost = {"candidates": len(candidates), "architectures": len({c.arch_name for c in candidates}),
            "measurements": len(measured.rows), "measured": measured.measured, "reused": measured.reused,
            "prepare_s": round(prepare_s, 3), "measure_s": round(measured.seconds, 3)}
    return SearchMeasurement(search, plans, judge(measured.rows, targets, search.margin), measured.runtimes, cost)


def int8_schemes(plans: list[TargetPlan]) -> list:
    """The INT8 schemes the targets run, each once, in the targets' order (an INT8 file per scheme)."""
    return list(dict.fromkeys(p.int8_scheme for p in plans if p.int8_scheme is not None))


def rank_search(measurement: SearchMeasurement, score: Score = None) -> SearchResult:
    """The winner per target (or one for all, `per_target: false`) among the candidates that fit."""
    m = measurement
    check_fits(m.judged, m.search.per_target)
    scorer = Scorer(score)
    chosen = choose(m.judged, scorer, m.search.per_target)
    cost = {**m.cost, "score_s": round(scorer.seconds, 3), "scored": len(scorer.values)}
    return SearchResult(m.search, m.plans, m.judged, chosen, "flops" if score is None else "proxy", scorer.values,
                        m.runtimes, cost)


def run_search(search: SearchConfig, targets: list["TargetProfile"], *, score: Score = None, **kwargs) -> SearchResult:
    """`measure_search` then `rank_search` (keyword arguments: those of `measure_search`)."""
    return rank_search(measure_search(search, targets, **kwargs), score)


# ------------------------------------------------------------------ JSON round trip
def _plan_json(p: TargetPlan) -> dict:
    return {"target": p.target.model_dump(mode="json"), "backend": p.backend, "precisions": list(p.precisions),
            "input_sizes": list(p.input_sizes), "host": p.host, "table": str(p.table) if p.table else None}


def _plan_from(d: dict) -> TargetPlan:
    from edgekd.targets import TargetProfile

    return TargetPlan(TargetProfile.model_validate(d["target"]), d["backend"], tuple(d["precisions"]),
                      tuple(d["input_sizes"]), d["host"], Path(d["table"]) if d["table"] else None)


def _judged_json(j: Judged) -> dict:
    return {"row": asdict(j.row), "limit_ms": j.limit_ms, "memory_limit_mb": j.memory_limit_mb, "fits": j.fits,
            "why_not": j.why_not}


def _judged_from(d: dict) -> Judged:
    row = dict(d["row"])
    row["candidate"] = Candidate(**row["candidate"])
    return Judged(Measured(**row), d["limit_ms"], d["memory_limit_mb"], d["fits"], d["why_not"])
