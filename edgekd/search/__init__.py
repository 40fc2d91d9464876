"""Meet the budget: search for the student that fits each device's latency budget, measured there.

The pipeline (phase 2, see docs/search.md) calls, in order:

    plan_targets / open_backends   where each target is measured; probes ssh devices, checks tables
    run_search                     measure_search (expand the grid, export/quantize, measure (cached), judge)
                                   then rank_search (rank the candidates that fit, choose)
    search_sections / pareto_plot  the report's `search` data and plot
    preview / format_preview       what `edgekd validate` shows

Everything importable here is torch-free; building and exporting candidates
imports torch inside the functions that do it. `edgekd profile` (the device
side) is edgekd.search.profile.
"""

from edgekd.search.cache import MeasurementCache, RuntimeInfo, measurement_key
from edgekd.search.candidates import (
    Architecture,
    Candidate,
    PreparedCandidate,
    describe_architectures,
    expand_grid,
    prepare_candidates,
)
from edgekd.search.config import SearchConfig, check_search, precisions_for
from edgekd.search.driver import SearchMeasurement, SearchResult, measure_search, rank_search, run_search
from edgekd.search.measure import BACKENDS, Measured, MeasureResult, measure_candidates, open_backends
from edgekd.search.plan import MeasureOptions, TargetPlan, plan_targets
from edgekd.search.preview import format_preview, preview
from edgekd.search.rank import Judged, Scorer, check_fits, choose, judge
from edgekd.search.report import pareto_plot, search_sections

__all__ = [
    "BACKENDS",
    "Architecture",
    "Candidate",
    "Judged",
    "MeasureOptions",
    "MeasureResult",
    "Measured",
    "MeasurementCache",
    "PreparedCandidate",
    "RuntimeInfo",
    "Scorer",
    "SearchConfig",
    "SearchMeasurement",
    "SearchResult",
    "TargetPlan",
    "check_fits",
    "check_search",
    "choose",
    "describe_architectures",
    "expand_grid",
    "format_preview",
    "judge",
    "measure_candidates",
    "measure_search",
    "measurement_key",
    "open_backends",
    "pareto_plot",
    "plan_targets",
    "precisions_for",
    "prepare_candidates",
    "preview",
    "rank_search",
    "run_search",
    "search_sections",
]
