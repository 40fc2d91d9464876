"""The whole search as one plain function: plan, probe, build, measure, judge, rank.

    result = run_search(search, targets, teacher_arch="resnet18", teacher_kwargs={"num_classes": 10, "in_chans": 3},
                        default_input_size=224, folder=run_dir / "search", cache_dir=run_dir / "cache" / "search",
                        calib_x=calib_x, opset=17)
    result.chosen["rpi5"].candidate -> Candidate(name="resnet18-w0.5-d1-224px-int8", ...)

Devices are probed and latency tables checked first, so a bad device or table
fails before any export (or, in the pipeline, any training). `score` ranks the
candidates that fit (see edgekd.search.rank); without it, FLOPs do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.search.cache import RuntimeInfo
from edgekd.search.candidates import expand_grid, prepare_candidates
from edgekd.search.config import SearchConfig
from edgekd.search.measure import measure_candidates, open_backends
from edgekd.search.plan import MeasureBackend, MeasureOptions, TargetPlan, plan_targets
from edgekd.search.rank import Judged, Score, Scorer, choose, judge

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile


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


def run_search(
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
    score: Score = None,
) -> SearchResult:
    """Plan -> open backends -> expand -> export/quantize -> measure (cached) -> judge -> choose."""
    plans = plan_targets(search, targets, default_input_size, hosts)
    backends = backends or open_backends(plans, options)
    precisions = list(dict.fromkeys(p for plan in plans for p in plan.precisions))
    candidates = expand_grid(search, teacher_name or teacher_arch, precisions, default_input_size)
    t0 = time.perf_counter()
    prepared = prepare_candidates(candidates, teacher_arch, teacher_kwargs, folder, calib_x, opset=opset,
                                  exporter=exporter, dynamic_batch=dynamic_batch, log=options.log)
    prepare_s = time.perf_counter() - t0
    measured = measure_candidates(prepared, backends, cache_dir)
    judged = judge(measured.rows, targets, search.margin)
    scorer = Scorer(score)
    chosen = choose(judged, scorer, search.per_target)
    cost = {"candidates": len(candidates), "architectures": len({c.arch_name for c in candidates}),
            "measurements": len(measured.rows), "measured": measured.measured, "reused": measured.reused,
            "prepare_s": round(prepare_s, 3), "measure_s": round(measured.seconds, 3),
            "score_s": round(scorer.seconds, 3), "scored": len(scorer.values)}
    return SearchResult(search, plans, judged, chosen, "flops" if score is None else "proxy", scorer.values,
                        measured.runtimes, cost)

