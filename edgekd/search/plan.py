"""Where each target's candidates are measured, and the interface every measuring backend has.

    plans = plan_targets(search, targets, default_input_size=224, hosts={"rpi5": "pi@raspberrypi"})

A target is measured
  - from its latency table, when `student.search.latency_table` gives one ("table");
  - over ssh on the device, when it has a host: the profile's `host:` or `hosts[target]` ("ssh");
  - on this machine otherwise ("host"), which must then have the target's arch.
Torch-free.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from edgekd.errors import ConfigError
from edgekd.search.config import SearchConfig, check_search, precisions_for
from edgekd.search.profile import GROUP, SEARCH_BENCH

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.bench.measure import BenchSettings
    from edgekd.quantize.schemes import Int8Scheme
    from edgekd.search.cache import RuntimeInfo
    from edgekd.search.candidates import PreparedCandidate
    from edgekd.targets import TargetProfile

_ARCH_NAMES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class TargetPlan:
    target: "TargetProfile"
    backend: str  # a key of edgekd.search.measure.BACKENDS: "host" | "ssh" | "table"
    precisions: tuple[str, ...]
    input_sizes: tuple[int, ...]
    host: str | None = None  # ssh only
    table: Path | None = None  # table only

    @property
    def int8_scheme(self) -> "Int8Scheme | None":
        """The INT8 types this target runs (edgekd.quantize.schemes): its INT8 candidates are quantized so."""
        from edgekd.quantize.schemes import scheme_for_target

        return scheme_for_target(self.target) if "int8" in self.precisions else None

    @property
    def where(self) -> str:
        return {"host": "this machine", "ssh": f"{self.host} over ssh", "table": f"latency table {self.table}"}[
            self.backend]


@dataclass(frozen=True)
class MeasureOptions:
    """How backends measure; the defaults are what a search uses."""

    settings: "BenchSettings" = SEARCH_BENCH
    group: int = GROUP  # files timed side by side (isolated processes, interleaved rounds)
    ssh_options: tuple[str, ...] = ()  # extra ssh arguments, e.g. ("-i", "~/.ssh/pi", "-p", "2222")
    remote_dir: str = "edgekd-search/{target}"  # on the device, relative to the login directory
    log: Callable[[str], None] = field(default=lambda _: None)


class MeasureBackend(Protocol):
    """Opened before anything is trained (a probe or a table check that fails raises then)."""

    plan: TargetPlan
    runtime: "RuntimeInfo"  # part of every cache key

    def measure(self, todo: list["PreparedCandidate"], save: Callable[["PreparedCandidate", dict], None]) -> None:
        """Measure `todo` on the target, calling `save(candidate, measurement)` as each result arrives."""


def this_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_NAMES.get(machine, machine)


def plan_targets(search: SearchConfig, targets: list["TargetProfile"], default_input_size: int,
                 hosts: dict[str, str] | None = None) -> list[TargetPlan]:
    """One plan per target; ConfigError for a target that cannot be measured anywhere."""
    check_search(search, targets)
    hosts = {**search.hosts, **(hosts or {})}
    unknown = sorted(set(hosts) - {t.name for t in targets})
    if unknown:
        raise ConfigError(f"Hosts are given for {', '.join(unknown)}, which are not among the targets "
                          f"({', '.join(t.name for t in targets)}).", "Use the targets' names.")
    sizes = tuple(search.input_sizes or [default_input_size])
    return [_plan(search, t, sizes, hosts.get(t.name) or t.host) for t in targets]


def _plan(search: SearchConfig, target: "TargetProfile", sizes: tuple[int, ...], host: str | None) -> TargetPlan:
    precisions = tuple(precisions_for(search, target))
    table = search.table_for(target.name)
    if table is not None:
        return TargetPlan(target, "table", precisions, sizes, table=Path(table))
    if host:
        return TargetPlan(target, "ssh", precisions, sizes, host=host)
    if target.arch != this_arch():
        raise ConfigError(
            f"Target {target.name!r} is an {target.arch} device and this machine is {this_arch()}: its "
            "candidates cannot be timed here.",
            f"Give it a host (`host: user@name` in its profile) to measure over ssh, or measure offline: `edgekd "
            f"search-bundle CONFIG BUNDLE --target {target.name}` here, `edgekd profile BUNDLE -o table.json` on the "
            f"device, then student.search.latency_table: {{{target.name}: table.json}}.",
        )
    return TargetPlan(target, "host", precisions, sizes)


def measurement_of(entry: dict, where: str) -> dict:
    """A latency-table entry as a cached measurement."""
    return {"latency_ms": entry["latency_ms"], "peak_rss_mb": entry.get("peak_rss_mb"),
            "iterations": entry.get("iterations"), "file_sha256": entry.get("sha256"), "where": where}
