"""Ship a run's artifacts to a device as a verified bundle.

    ship(run_dir, target, to)  # workstation: build, verify here, copy, verify there, rename
    verify_bundle(bundle)      # device (edgekd.ship.verify): numpy + onnxruntime only

Submodules are imported inside `ship()` so that `import edgekd.ship.verify`
on a device pulls in nothing but the verifier.

ship holds the run directory's lock (edgekd.rundir) while it reads it, and
builds the bundle under the run directory's `.edgekd/tmp/`, where a killed
ship's staging is found and removed by the next command on that directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.ship.verify import VerifyResult
    from edgekd.targets import TargetProfile


@dataclass
class ShipResult:
    destination: str
    models: list[str]  # file names shipped
    local_check: "VerifyResult"  # golden outputs re-run from the built bundle before sending


def ship(
    run_dir: str | Path,
    target: "TargetProfile",
    to: str,
    artifacts: list[str] | None = None,
    golden_samples: int | None = None,  # default: edgekd.ship.bundle.GOLDEN_SAMPLES
    ssh_options: list[str] | tuple[str, ...] = (),
    force: bool = False,
    transfer: str = "auto",
) -> ShipResult:
    from edgekd import rundir
    from edgekd.ship.bundle import build_bundle
    from edgekd.ship.copy import copy_bundle
    from edgekd.pipeline.records import target_run_dir
    from edgekd.ship.verify import verify_bundle

    run_dir = Path(run_dir)
    with rundir.hold(run_dir, "edgekd ship"):  # no compress rewrites what is being shipped
        rundir.clean(run_dir)  # a killed command's staging and half files
        with rundir.scratch(run_dir, "bundle-") as tmp:
            # a per_target search distils some targets' students in students/<arch>/: ship from the target's own
            own = target_run_dir(run_dir, target.name)
            bundle = build_bundle(own, target, tmp / "bundle", artifacts, golden_samples)
            local = verify_bundle(bundle)  # catches a bad bundle before it costs a transfer
            where = copy_bundle(bundle, to, ssh_options=ssh_options, force=force, transfer=transfer)
    return ShipResult(where, [m.file for m in local.models], local)
