"""Measurement cache: one JSON file per measured (candidate, precision, input size, target, runtime).

    cache = MeasurementCache(run_dir / "cache" / "search")
    key = measurement_key(prepared, target, runtime)
    cache.get(key) -> dict | None;  cache.put(key, measurement)

The key holds the architecture's hash (not its name: a renamed grid entry for the
same network hits), precision, input size, the target's name, threads and graph
optimization level, and the runtime's name and version, arch and CPU where it was
measured. Each entry is its own file, written atomically the moment a candidate is
measured, so an interrupted search keeps everything measured before the
interruption and a re-run measures nothing twice. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.artifacts import write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.search.candidates import PreparedCandidate
    from edgekd.targets import TargetProfile

CACHE_FORMAT = "edgekd.search-measurement/1"


@dataclass(frozen=True)
class RuntimeInfo:
    """Where and with what a target's measurements are taken (from a probe or a table's header)."""

    name: str  # "onnxruntime"
    version: str
    arch: str
    cpu: str

    def describe(self) -> str:
        return f"{self.name} {self.version} on {self.cpu} ({self.arch})"


def measurement_key(prepared: "PreparedCandidate", target: "TargetProfile", runtime: RuntimeInfo) -> dict:
    c = prepared.candidate
    return {
        "arch_id": prepared.architecture.arch_id,
        "precision": c.precision,
        **({"int8_scheme": prepared.scheme} if prepared.scheme is not None else {}),
        "input_size": c.input_size,
        "target": {"name": target.name, "threads": target.threads,
                   "graph_optimization_level": target.graph_optimization_level},
        "runtime": {"name": runtime.name, "version": runtime.version, "arch": runtime.arch, "cpu": runtime.cpu},
    }


class MeasurementCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.folder / f"{digest}.json"

    def get(self, key: dict) -> dict | None:
        path = self._path(key)
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # absent, or damaged: measure again
            return None
        if stored.get("format") != CACHE_FORMAT or stored.get("key") != key:
            return None
        return stored["measurement"]

    def put(self, key: dict, measurement: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return write_json_atomic(self._path(key), {"format": CACHE_FORMAT, "key": key, "created": created,
                                                   "measurement": measurement})

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.json"))) if self.folder.is_dir() else 0
