"""Command line: parses options, calls plain functions, maps errors to exit codes.

Exit codes are documented in README.md ("Exit codes") and `edgekd.errors.EXIT_CODES`.
Errors print as one paragraph; the traceback only with --debug.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from edgekd import __version__
from edgekd.errors import EXIT_CODES, project_error


class EdgekdGroup(click.Group):
    """Turns every failure of every command into one paragraph and its documented exit code
    (`edgekd.errors.project_error` decides which)."""

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug", False)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.secho("interrupted: finished stages and epoch checkpoints are kept; re-run to resume.", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # the CLI edge: project errors and file-system faults, else a bug to report
            if debug:
                traceback.print_exc()
            error = project_error(exc)
            if error is not None:
                click.secho(f"error: {error}", fg="red", err=True)
                ctx.exit(error.exit_code)
            click.secho(f"internal error: {type(exc).__name__}: {exc}\n"
                        "This is a bug in edgekd. Re-run with --debug for the traceback and report it.", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=EdgekdGroup, epilog="Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + ".")
@click.version_option(__version__, prog_name="edgekd")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """Distil a timm teacher into an edge-sized student, export and benchmark it per device."""


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<config name>/).")
@click.option("--force", is_flag=True, help="Redo every stage from scratch, even those whose inputs are unchanged: "
              "stage records, epoch checkpoints (work/**/last.pt), finished chain links and the teacher-output "
              "cache (cache/) are ignored or removed. Files a stage writes are replaced when it reruns.")
@click.option("--quiet", is_flag=True, help="Only errors and the final summary.")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="ARG",
              help="Extra ssh argument for devices student.search measures on (repeatable), e.g. "
              "--ssh-option=-i --ssh-option=~/.ssh/pi.")
def compress(config: Path, out: Path | None, force: bool, quiet: bool, ssh_options: tuple[str, ...]) -> None:
    """Teacher -> student -> ONNX -> INT8 -> benchmark -> report, from CONFIG (model.yaml)."""
    from edgekd.pipeline.compress import compress as run_compress
    from edgekd.ui import UI

    result = run_compress(config, out=out, force=force, ui=UI(quiet=quiet), ssh_options=ssh_options)
    if result.main:  # torchrun: rank 0 speaks for the run
        click.echo(result.summary())


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--probe", is_flag=True, help="student.search: also reach every ssh device and ask what it runs.")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="ARG",
              help="Extra ssh argument for --probe (repeatable).")
def validate(config: Path, probe: bool, ssh_options: tuple[str, ...]) -> None:
    """Check CONFIG without running anything (types, keys, paths, targets, model names); with student.search,
    preview its candidates (params, FLOPs) and how many measurements each target takes, where."""
    from edgekd.config import config_warnings, student_input
    from edgekd.pipeline.compress import no_real_choices_plan, preflight, search_preview

    cfg = preflight(config)
    click.echo(f"{config}: valid — run name {cfg.name!r}, targets {', '.join(cfg.targets)}.")
    if not cfg.data.real_choices:
        click.echo(no_real_choices_plan(cfg))
    if cfg.data.kind in ("imagefolder", "webdataset"):  # listed, not decoded: a stat per file, tar headers
        from edgekd.data.splits import imagefolder_summary

        click.echo(imagefolder_summary(cfg.data.shards or cfg.data.path, cfg.data.val_fraction,
                                       cfg.data.test_fraction, cfg.data.seed, cache_root=cfg.data.cache_dir))
    size, channels = student_input(cfg)
    if (size, channels) != (cfg.data.input_size, cfg.data.channels):
        click.echo(f"student input {channels}×{size}×{size} (its own view of each sample); teacher input "
                   f"{cfg.data.channels}×{cfg.data.input_size}×{cfg.data.input_size}.")
    plan = search_preview(cfg, probe=probe, ssh_options=ssh_options)
    if plan:
        click.echo(plan)
    for warning in config_warnings(cfg):
        click.secho(f"warning: {warning}", fg="yellow", err=True)


@main.command("search-bundle")
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", "-t", default=None, help="The offline target the bundle is for (needed with several).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<config name>/).")
def search_bundle(config: Path, bundle: Path, target: str | None, out: Path | None) -> None:
    """student.search on a device this machine cannot reach: write its candidates to BUNDLE (a new folder).
    Copy BUNDLE to the device, run `edgekd profile BUNDLE -o table.json` there, copy the table back and
    set student.search.latency_table: {TARGET: table.json}; then `edgekd compress CONFIG`."""
    from edgekd.pipeline.search_bundle import search_bundle as write_bundle

    written, count, name = write_bundle(config, bundle, target, out)
    click.echo(f"wrote {written}: {count} candidates for {name}. On the device: edgekd profile {written.name} -o "
               f"{name}-table.json; then set student.search.latency_table: {{{name}: {name}-table.json}}.")


@main.command()
@click.argument("path", type=click.Path(path_type=Path), default="model.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented model.yaml template to PATH (default: ./model.yaml)."""
    from edgekd.errors import ConfigError
    from edgekd.template import TEMPLATE

    if path.exists() and not force:
        raise ConfigError(f"{path} already exists.", "Choose another path or pass --force to overwrite it.")
    path.write_text(TEMPLATE)
    click.echo(f"wrote {path}; edit it, then: edgekd validate {path} && edgekd compress {path}")


@main.command()
def targets() -> None:
    """List the device profiles this machine can see."""
    from edgekd.targets import available, load_target

    rows = [load_target(str(path)) for path in available().values()]
    click.echo(f"{'name':<20} {'runtime':<12} {'arch':<8} {'precisions':<14} {'opset':>5} {'budget ms':>9}  description")
    for t in rows:
        click.echo(f"{t.name:<20} {t.runtime:<12} {t.arch:<8} {','.join(t.precisions):<14} {t.max_opset:>5} "
                   f"{t.budgets.latency_ms:>9g}  {t.description}")


def _register_subsystem_commands() -> None:
    """Device-side commands live with their subsystem; their modules import no torch."""
    from edgekd.bench.cli import bench_command
    from edgekd.report.merge import merge_command
    from edgekd.search.profile import profile_command
    from edgekd.ship.cli import ship_command, verify_command
    from edgekd.trt.cli import register as register_trt

    register_trt(main)
    for command in (bench_command, profile_command, ship_command, verify_command):
        main.add_command(command)
    report_group.add_command(merge_command)


@main.group("report")
def report_group() -> None:
    """Work with report.json files (merge reports from several devices)."""


_register_subsystem_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
