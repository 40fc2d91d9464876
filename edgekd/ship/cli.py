"""`edgekd ship` and `edgekd verify` (click commands; errors map to exit codes in edgekd.cli)."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path

import click


@click.command("ship")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--target", "-t", "target_name", required=True, help="Target profile name or YAML path.")
@click.option("--to", "dest", required=True, help="Bundle directory to create: a local path or user@host:path.")
@click.option("--artifact", "artifacts", multiple=True, help="Ship this artifact (repeatable); default: the "
              "student ONNX files for the target's runtime and precisions.")
@click.option("--golden", "golden_samples", type=click.IntRange(1, 4096), default=None,
              help="Validation samples whose outputs travel with the bundle (default 128, at most the split; "
                   "int8 models need at least 64).")
@click.option("--ssh-option", "ssh_options", multiple=True,
              help="Extra ssh argument (repeatable), e.g. --ssh-option=-i --ssh-option=~/.ssh/pi.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at the destination.")
@click.option("--copy-with", "transfer", type=click.Choice(["auto", "rsync", "scp"]), default="auto",
              show_default=True, help="Remote copy tool; auto: rsync when both ends have it, else scp.")
def ship_command(run_dir, target_name, dest, artifacts, golden_samples, ssh_options, force, transfer) -> None:
    """Bundle a run's models for TARGET and copy them to a device, verified."""
    from edgekd.ship import ship
    from edgekd.ship.copy import Remote, parse_dest
    from edgekd.targets import load_target

    result = ship(run_dir, load_target(target_name), dest, list(artifacts) or None, golden_samples,
                  list(ssh_options), force, transfer)
    click.echo(f"shipped {', '.join(result.models)} to {result.destination}")
    where = parse_dest(dest)
    # shell-quoted: a path with spaces or metacharacters pastes back as one argument
    click.echo("on the device: " + shlex.join(["edgekd", "verify", str(where.path if isinstance(where, Remote) else where)]))


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--hashes-only", is_flag=True, help="Check file hashes only (no runtime needed).")
@click.option("--threads", type=int, default=None, help="Runtime threads (default: the target's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_command(bundle, hashes_only, threads, as_json) -> None:
    """Check a shipped bundle: hashes, model loading, golden outputs."""
    from edgekd.ship.verify import verify_bundle

    result = verify_bundle(bundle, hashes_only=hashes_only, threads=threads)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(f"{result.files_checked} files match their SHA-256")
    for m in result.models:
        click.echo(f"{m.file}: golden outputs match ({m.precision}, max |diff| {m.max_abs_diff:.3g} "
                   f"<= {m.allowed_abs_diff:.3g}, top-1 agreement {m.top1_agreement:.0%} on {m.samples} samples)")
    if result.unlisted_files:
        click.echo(f"note: files not in the manifest (ignored, never read): {', '.join(result.unlisted_files)}")
    if result.golden_skipped:
        click.echo(f"note: {result.golden_skipped}")
    click.echo("OK (hashes only; models not run)" if hashes_only or result.golden_skipped else "OK")
