"""This machine: the isolated-process method of `edgekd bench` (edgekd.bench.measure), batch 1; a TensorRT
target (a workstation GPU profile): engines built and timed here (edgekd.search.trt_timing), which needs
TensorRT here (refused when the backend opens, before any work, without it).

The same code `edgekd profile` runs on a device, called in-process here. Torch-free.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from edgekd.artifacts import sha256_file
from edgekd.search.cache import RuntimeInfo
from edgekd.search.candidates import PreparedCandidate
from edgekd.search.plan import MeasureOptions, TargetPlan, measurement_of
from edgekd.search.profile import ProfileItem, measure_items, probe, runtime_or_raise


class HostBackend:
    def __init__(self, plan: TargetPlan, options: MeasureOptions):
        self.plan, self.options = plan, options
        found = runtime_or_raise(probe(), runtime=plan.target.runtime)
        self.runtime = RuntimeInfo(found["runtime"]["name"], found["runtime"]["version"], found["arch"], found["cpu"])

    def measure(self, todo: list[PreparedCandidate], save: Callable[[PreparedCandidate, dict], None]) -> None:
        by_name = {p.name: p for p in todo}
        items = [ProfileItem(p.name, p.path, p.candidate.precision, p.candidate.input_size, p.architecture.arch_id,
                             sha256_file(p.path)) for p in todo]

        def saved(entries: list[dict]) -> None:
            for e in entries:
                save(by_name[e["name"]], measurement_of(e, self.plan.where))
            self.options.log(f"{self.plan.target.name}: " + ", ".join(
                f"{e['name']} {e['latency_ms']['p50']:.3f} ms" for e in entries))

        if self.plan.target.runtime == "tensorrt":
            from edgekd.search.trt_timing import measure_items_trt

            with tempfile.TemporaryDirectory(prefix="edgekd-engines-") as engines:
                measure_items_trt(items, self.options.settings, self.plan.target, Path(engines), on_entries=saved)
            return
        measure_items(items, self.plan.target.threads, self.options.settings, self.options.group, self.plan.target,
                      on_entries=saved)
