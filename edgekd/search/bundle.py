"""A candidate bundle: every candidate's ONNX file in one edgekd bundle, for `edgekd profile`.

    write_candidate_bundle(prepared, target, out_dir)

Laid out and hashed as `edgekd ship` bundles are (manifest.json with the SHA-256
of every file, SHA256SUMS), so `edgekd.ship.copy.copy_bundle` moves it and checks
it on the device with `sha256sum -c`, and `edgekd verify` checks its hashes. Its
manifest's `kind` is "search-candidates" and `candidates` lists what each file is;
`models` is empty because untrained candidates have no golden outputs to compare.
Torch-free.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd import __version__
from edgekd.errors import ConfigError
from edgekd.search.profile import BUNDLE_KIND

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.search.candidates import PreparedCandidate
    from edgekd.targets import TargetProfile


def write_candidate_bundle(prepared: list["PreparedCandidate"], target: "TargetProfile", out_dir: str | Path) -> Path:
    """Copy each candidate's ONNX file into `out_dir` (created; must not exist) and write its manifest."""
    from edgekd.bench.sysinfo import versions
    from edgekd.ship.bundle import _write_manifest
    from edgekd.ship.verify import BUNDLE_FORMAT

    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out} already exists.", "Write the candidate bundle to a new directory.")
    (out / "golden").mkdir(parents=True)
    np.save(out / "golden" / "inputs.npy", np.zeros((0,), dtype=np.float32))  # no golden checks: see above
    candidates = []
    for p in prepared:
        shutil.copy2(p.path, out / p.path.name)
        candidates.append({"name": p.name, "file": p.path.name, "arch_name": p.candidate.arch_name,
                           "arch_id": p.architecture.arch_id, "precision": p.candidate.precision,
                           "input_size": p.candidate.input_size, "params": p.architecture.params,
                           "flops": p.architecture.flops})
    _write_manifest(out, {
        "format": BUNDLE_FORMAT,
        "kind": BUNDLE_KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgekd_version": __version__,
        "target": target.model_dump(),
        "runtime": target.runtime,
        "golden": {"inputs": "golden/inputs.npy", "samples": 0},
        "models": [],
        "candidates": candidates,
        "versions": versions(),
    })
    return out
