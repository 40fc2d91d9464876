"""`edgekd build` and `edgekd bench-engine`: the on-device TensorRT commands.

They only parse options and call `build.build_engine` / `engine.benchmark_engine`;
`register(group)` adds both commands to the main `edgekd` click group, whose
error edge (edgekd.cli) turns an EdgekdError into its message, its hint and its
documented exit code.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

PRECISION_CHOICE = click.Choice(["fp32", "fp16", "int8"])


@click.command("build")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", required=True, help="Target profile name or YAML path, e.g. jetson-orin-nano.")
@click.option(
    "--precision",
    type=PRECISION_CHOICE,
    default=None,
    help="Engine precision. Default: the target's first listed precision.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Engine path. Default: ARTIFACT's name with .<target>.engine, next to it.",
)
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--opt-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--workspace-mb",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Builder workspace (memory pool limit) in MiB.",
)
@click.option(
    "--dla-core",
    type=click.IntRange(min=0),
    default=None,
    help="Run on this DLA core (Orin/Xavier; fp16/int8), GPU fallback on.",
)
@click.option(
    "--strongly-typed/--weakly-typed",
    default=None,
    help="Network typing. Default: weakly typed on TensorRT 8/10, strongly typed on 11.",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Timing cache file. Default: one per TensorRT version next to the engine.",
)
def build_command(
    artifact,
    target,
    precision,
    out,
    min_batch,
    opt_batch,
    max_batch,
    workspace_mb,
    dla_core,
    strongly_typed,
    timing_cache,
):
    """Build a TensorRT engine from ARTIFACT.onnx, on the device that will run it."""
    from edgekd.targets import load_target
    from edgekd.trt.build import build_engine

    profile = load_target(target)
    if precision is None:
        precision = profile.precisions[0]
        click.echo(f"precision: {precision} (the first precision of target {profile.name!r})")
    out = out or artifact.with_name(f"{artifact.stem}.{profile.name}.engine")
    sidecar = build_engine(
        artifact,
        out,
        precision=precision,
        target=profile,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        dla_core=dla_core,
        strongly_typed=strongly_typed,
    )
    plan = sidecar["plan"]
    click.echo(
        f"built {out} ({sidecar['engine']['bytes'] / 2**20:.1f} MiB) in {sidecar['build_seconds']:.1f} s: "
        f"TensorRT {sidecar['tensorrt']['version']}, {sidecar['gpu']['name']}, {precision}, "
        f"{'strongly' if plan['strongly_typed'] else 'weakly'} typed"
    )


@click.command("bench-engine")
@click.argument("engine", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--warmup-ms", type=click.IntRange(min=0), default=200, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Seconds of timed inferences (at least 10 are run).",
)
@click.option(
    "--val",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The bundle's data/test.npz (x float32 NCHW, y int64) to measure accuracy on.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results here as JSON.",
)
def bench_engine_command(engine, batch, warmup_ms, duration, val, json_out):
    """Time ENGINE like trtexec (GPU compute and end-to-end latency) and score it on a test.npz."""
    from edgekd.trt.engine import benchmark_engine

    result = benchmark_engine(engine, batch=batch, warmup_s=warmup_ms / 1000, duration_s=duration, val=val)
    for line in format_bench(result):
        click.echo(line)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


def format_bench(result: dict) -> list[str]:
    """Human-readable lines for a benchmark_engine result."""
    lines = [
        f"{result['engine']}: TensorRT {result['tensorrt']}, {result['gpu']['name']}, "
        f"{result['precision']}, batch {result['batch']}, {result['iterations']} iterations"
    ]
    for key, label in (("gpu_compute_ms", "GPU compute"), ("latency_ms", "latency (H2D+compute+D2H)")):
        s = result[key]
        lines.append(
            f"  {label:28s} mean {s['mean']:.3f} ms  p50 {s['p50']:.3f}  p90 {s['p90']:.3f}  "
            f"p99 {s['p99']:.3f}"
        )
    if result.get("throughput_per_s"):
        lines.append(
            f"  {'throughput':28s} {result['throughput_per_s']:.1f} samples/s (one inference in flight)"
        )
    lines.append(f"  {'engine size':28s} {result['engine_bytes'] / 2**20:.2f} MiB")
    lines.append(f"  {'context device memory':28s} {result['context_device_memory_bytes'] / 2**20:.2f} MiB")
    if "accuracy" in result:
        acc = result["accuracy"]
        lines.append(f"  {'accuracy':28s} {acc['accuracy']:.4f} on {acc['samples']} samples")
    return lines


def register(group: click.Group) -> None:
    """Add `build` and `bench-engine` to the main CLI group."""
    group.add_command(build_command)
    group.add_command(bench_engine_command)
