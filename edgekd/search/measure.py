"""Measure every candidate on every target, through the cache.

    backends = open_backends(plans, MeasureOptions(...))     # probes devices, checks tables: before training
    result = measure_candidates(prepared, backends, cache_dir)
    result.rows -> [Measured(candidate, target, p50_ms, ...)], result.measured / result.reused

Each target's backend measures only what the cache does not hold under that
target's runtime; every result is cached the moment it arrives. Torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekd.errors import RuntimeBackendError
from edgekd.search.backends.host import HostBackend
from edgekd.search.backends.ssh import SshBackend
from edgekd.search.backends.table import TableBackend
from edgekd.search.cache import MeasurementCache, RuntimeInfo, measurement_key
from edgekd.search.candidates import Candidate, PreparedCandidate
from edgekd.search.plan import MeasureBackend, MeasureOptions, TargetPlan

BACKENDS: dict[str, Callable[[TargetPlan, MeasureOptions], MeasureBackend]] = {
    "host": HostBackend,
    "ssh": SshBackend,
    "table": TableBackend,
}


@dataclass(frozen=True)
class Measured:
    candidate: Candidate
    target: str
    params: int
    flops: int
    p50_ms: float
    latency_ms: dict  # p50 p90 p99 mean std min max at batch 1
    peak_rss_mb: float | None
    where: str
    cached: bool  # taken from the cache, not measured in this call


@dataclass
class MeasureResult:
    rows: list[Measured] = field(default_factory=list)
    measured: int = 0  # measured in this call
    reused: int = 0  # found in the cache
    seconds: float = 0.0
    runtimes: dict[str, RuntimeInfo] = field(default_factory=dict)  # target -> where its numbers come from


def open_backends(plans: list[TargetPlan], options: MeasureOptions = MeasureOptions()) -> dict[str, MeasureBackend]:
    """One opened backend per target (in the targets' order). Raises here, before any work, for an
    unreachable device, a device without onnxruntime or a latency table that does not fit."""
    return {plan.target.name: BACKENDS[plan.backend](plan, options) for plan in plans}


def measure_candidates(prepared: list[PreparedCandidate], backends: dict[str, MeasureBackend],
                       cache_dir: str | Path) -> MeasureResult:
    cache = MeasurementCache(cache_dir)
    result = MeasureResult()
    start = time.perf_counter()
    for name, backend in backends.items():
        result.runtimes[name] = backend.runtime
        result.rows += _measure_target(prepared, backend, cache, result)
    result.seconds = time.perf_counter() - start
    return result


def _measure_target(prepared, backend: MeasureBackend, cache: MeasurementCache, result: MeasureResult) -> list[Measured]:
    plan = backend.plan
    scheme = plan.int8_scheme.key if plan.int8_scheme is not None else None
    mine = [p for p in prepared if p.candidate.precision in plan.precisions and p.scheme in (None, scheme)]
    keys = {p.name: measurement_key(p, plan.target, backend.runtime) for p in mine}
    got = {p.name: cache.get(keys[p.name]) for p in mine}
    cached = {n for n, m in got.items() if m is not None}
    todo = [p for p in mine if p.name not in cached]

    def save(p: PreparedCandidate, measurement: dict) -> None:
        cache.put(keys[p.name], measurement)
        got[p.name] = measurement

    if todo:
        backend.measure(todo, save)
    lost = [p.name for p in todo if got[p.name] is None]
    if lost:
        raise RuntimeBackendError(f"Measuring on {plan.where} returned nothing for {', '.join(lost)}.",
                                  "This is an edgekd bug; report it with the search's cache folder.")
    result.measured += len(todo)
    result.reused += len(cached)
    return [_row(p, plan.target.name, got[p.name], p.name in cached) for p in mine]


def _row(p: PreparedCandidate, target: str, m: dict, cached: bool) -> Measured:
    return Measured(p.candidate, target, p.architecture.params, p.architecture.flops, float(m["latency_ms"]["p50"]),
                    m["latency_ms"], m.get("peak_rss_mb"), m["where"], cached)
