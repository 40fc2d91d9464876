"""An offline device: measurements read from a latency table that `edgekd profile` wrote on it.

The table must match the target: same runtime (and `runtime_version`, when the
profile gives one), same arch, same threads (unless the target leaves them to the
runtime), and hold every input size the search tries. Each mismatch is refused,
saying which; a candidate missing from the table is refused with the command that
measures it. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from edgekd.errors import ConfigError
from edgekd.search.cache import RuntimeInfo
from edgekd.search.candidates import PreparedCandidate
from edgekd.search.plan import MeasureOptions, TargetPlan, measurement_of
from edgekd.search.profile import TABLE_FORMAT

REMAKE = ("Run `edgekd profile CANDIDATE_BUNDLE -o table.json` on the device (the bundle of this search's candidates: "
          "`edgekd search-bundle CONFIG CANDIDATE_BUNDLE --target TARGET` here)")


def read_table(path: Path) -> dict:
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Latency table {path} cannot be read: {exc}.", f"{REMAKE}.") from None
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise ConfigError(f"{path} is not an edgekd latency table (format {TABLE_FORMAT}).", f"{REMAKE}.")
    return table


def check_table(table: dict, plan: TargetPlan, path: Path) -> None:
    """Refuse a table measured under other conditions than the target's, naming the difference."""
    t, runtime = plan.target, table["runtime"]
    problems = []
    if runtime["name"] != t.runtime:
        problems.append(f"it was measured with {runtime['name']}, target {t.name!r} runs {t.runtime}")
    elif t.runtime_version and not _same_version(runtime["version"], t.runtime_version):
        problems.append(f"it was measured with {runtime['name']} {runtime['version']}, target {t.name!r} runs "
                        f"{t.runtime_version} (runtime_version)")
    if table["machine"]["arch"] != t.arch:
        problems.append(f"it was measured on {table['machine']['arch']}, target {t.name!r} is {t.arch}")
    if t.threads and table["threads"] != t.threads:
        problems.append(f"it was measured with {table['threads']} threads, target {t.name!r} uses {t.threads}")
    missing = [s for s in plan.input_sizes if s not in table.get("input_sizes", [])]
    if missing:
        problems.append(f"it has no measurements at input size {', '.join(map(str, missing))} px (it has "
                        f"{', '.join(map(str, table.get('input_sizes', []))) or 'none'})")
    if problems:
        raise ConfigError(f"Latency table {path} does not fit target {t.name!r}: " + "; ".join(problems) + ".",
                          f"{REMAKE} with the target's runtime and settings, or fix the target profile.")


def _same_version(measured: str, wanted: str) -> bool:
    """'1.18' matches 1.18.x; '1.18.1' only itself."""
    parts = wanted.split(".")
    return measured.split(".")[:len(parts)] == parts


class TableBackend:
    def __init__(self, plan: TargetPlan, options: MeasureOptions):
        self.plan, self.options = plan, options
        self.table = read_table(plan.table)
        check_table(self.table, plan, plan.table)
        machine = self.table["machine"]
        self.runtime = RuntimeInfo(self.table["runtime"]["name"], self.table["runtime"]["version"],
                                   machine["arch"], machine["cpu"])

    def measure(self, todo: list[PreparedCandidate], save: Callable[[PreparedCandidate, dict], None]) -> None:
        found = {p.name: self._entry_for(p) for p in todo}
        missing = [name for name, entry in found.items() if entry is None]
        if missing:
            raise ConfigError(
                f"Latency table {self.plan.table} has no measurement of {len(missing)} candidate"
                f"{'s' if len(missing) > 1 else ''}: {', '.join(missing)}.",
                f"{REMAKE}; it continues an existing table, measuring only what is new.",
            )
        for p in todo:
            save(p, measurement_of(found[p.name], self.plan.where))

    def _entry_for(self, p: PreparedCandidate) -> dict | None:
        c = p.candidate
        for e in reversed(self.table["entries"]):  # the latest entry for a candidate wins
            same_arch = e.get("arch_id") == p.architecture.arch_id if e.get("arch_id") else e["name"] == p.name
            if same_arch and e["precision"] == c.precision and e["input_size"] == c.input_size:
                return e
        return None
