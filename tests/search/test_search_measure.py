"""The host backend for real (isolated worker processes), the cache and resuming after a failure."""

import dataclasses
import json

import pytest

from edgekd.errors import RuntimeBackendError
from edgekd.search.cache import MeasurementCache, RuntimeInfo, measurement_key
from edgekd.search.config import SearchConfig
from edgekd.search.measure import measure_candidates, open_backends
from edgekd.search.plan import MeasureOptions, plan_targets
from edgekd.targets import load_target
from tests.search.conftest import GRID, QUICK

ONE_THREAD = load_target("host-cpu").model_copy(update={"threads": 1})


def host_backends(group: int = 8, search: SearchConfig = GRID, target=ONE_THREAD):
    return open_backends(plan_targets(search, [target], 32), MeasureOptions(settings=QUICK, group=group))


def test_host_measures_every_candidate_then_the_cache_answers(prepared, tmp_path):
    backends = host_backends()
    runtime = backends["host-cpu"].runtime
    import onnxruntime

    assert (runtime.name, runtime.version) == ("onnxruntime", onnxruntime.__version__)
    first = measure_candidates(prepared, backends, tmp_path)
    assert (first.measured, first.reused) == (4, 0)
    assert [r.candidate.name for r in first.rows] == [p.name for p in prepared]
    for row, p in zip(first.rows, prepared):
        assert row.p50_ms > 0 and row.latency_ms["min"] <= row.p50_ms <= row.latency_ms["max"]
        assert (row.params, row.flops, row.where, row.cached) == (p.architecture.params, p.architecture.flops,
                                                                 "this machine", False)
    assert len(MeasurementCache(tmp_path)) == 4
    again = measure_candidates(prepared, host_backends(), tmp_path)
    assert (again.measured, again.reused) == (0, 4)
    assert [r.p50_ms for r in again.rows] == [r.p50_ms for r in first.rows] and all(r.cached for r in again.rows)


def test_only_the_targets_precisions_are_measured(prepared, tmp_path):
    int8_only = SearchConfig(**{**GRID.model_dump(), "precisions": ["int8"]})
    result = measure_candidates(prepared, host_backends(search=int8_only), tmp_path)
    assert [r.candidate.precision for r in result.rows] == ["int8", "int8"]


def test_an_interrupted_search_continues_with_what_was_measured(prepared, tmp_path):
    # The second group's file is damaged: the search fails there, after the first group was cached.
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(prepared[3].path.read_bytes()[:200])
    damaged = prepared[:3] + [dataclasses.replace(prepared[3], path=broken)]
    with pytest.raises(RuntimeBackendError, match="broken.onnx"):
        measure_candidates(damaged, host_backends(group=2), tmp_path / "cache")
    assert len(MeasurementCache(tmp_path / "cache")) == 2
    resumed = measure_candidates(prepared, host_backends(group=2), tmp_path / "cache")
    assert (resumed.measured, resumed.reused) == (2, 2)
    assert [r.cached for r in resumed.rows] == [True, True, False, False]


def test_cache_keys_separate_runtimes_targets_and_precisions(prepared, tmp_path):
    cache = MeasurementCache(tmp_path)
    here = RuntimeInfo("onnxruntime", "1.32.0", "x86_64", "some cpu")
    key = measurement_key(prepared[0], ONE_THREAD, here)
    cache.put(key, {"latency_ms": {"p50": 1.0}, "where": "x"})
    assert cache.get(key) == {"latency_ms": {"p50": 1.0}, "where": "x"}
    others = [
        measurement_key(prepared[0], ONE_THREAD, dataclasses.replace(here, version="1.31.0")),
        measurement_key(prepared[0], ONE_THREAD.model_copy(update={"threads": 2}), here),
        measurement_key(prepared[0], load_target("rpi5"), here),
        measurement_key(prepared[1], ONE_THREAD, here),  # int8 of the same architecture
        measurement_key(prepared[2], ONE_THREAD, here),  # another architecture
    ]
    assert all(cache.get(k) is None for k in others)
    # A renamed grid entry for the same network is the same measurement.
    renamed = dataclasses.replace(prepared[0], candidate=dataclasses.replace(prepared[0].candidate, name="other-fp32"))
    assert cache.get(measurement_key(renamed, ONE_THREAD, here)) is not None
    # A damaged entry is measured again, never trusted.
    entry = next(tmp_path.glob("*.json"))
    entry.write_text(entry.read_text()[:20])
    assert cache.get(key) is None
    cache.put(key, {"latency_ms": {"p50": 2.0}, "where": "x"})
    assert json.loads(entry.read_text())["measurement"]["latency_ms"]["p50"] == 2.0
    assert not list(tmp_path.glob("*.partial"))

