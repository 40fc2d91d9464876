"""`edgekd search-bundle`: the first of the three commands of the offline search (docs/search.md).

    edgekd search-bundle model.yaml candidates/ --target rpi5     # here: the candidates as one bundle
    edgekd profile candidates/ -o rpi5-table.json                 # on the device (torch-free)
    edgekd compress model.yaml   # here, with student.search.latency_table: {rpi5: rpi5-table.json}

It runs the compress pipeline's data stage in the run directory (reused by the later compress run when
nothing changed: the candidates' class count and calibration samples come from it), then exports every
candidate where the search stage keeps them (cache/search/candidates/), so the table the device writes
names exactly the architectures the compress run measures.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.ui import UI


def search_bundle(config_path: str | Path, bundle: str | Path, target: str | None = None, out: Path | None = None,
                  ui: UI | None = None) -> tuple[Path, int, str]:
    """Write the candidate bundle for `target` at `bundle`; (bundle, candidates, target name)."""
    from edgekd import rundir
    from edgekd.config import load_config
    from edgekd.errors import ConfigError
    from edgekd.pipeline.context import RunContext
    from edgekd.pipeline.engine import run_stages
    from edgekd.pipeline.search_stage import offline_target, write_search_bundle
    from edgekd.pipeline.train_stages import DATA

    config = load_config(config_path)
    if Path(bundle).exists():  # before the data stage runs: nothing to undo
        raise ConfigError(f"{bundle} already exists.", "Write the candidate bundle to a new directory.")
    run_dir = (out or Path("runs") / config.name).resolve()
    ui = ui or UI()
    with rundir.hold(run_dir, "edgekd search-bundle"):
        rundir.clean(run_dir)
        ctx = RunContext(config=config, run_dir=run_dir, ui=ui)
        name = offline_target(ctx, target).name  # a wrong name fails before any work
        run_stages([DATA], ctx, ui)
        written, count = write_search_bundle(ctx, name, Path(bundle))
    return written, count, name
