"""`edgekd bench ARTIFACT...`: benchmark artifacts on this machine, write a device report.

Runs with numpy + onnxruntime (or tensorrt) only. `bench_artifacts()` is the
plain function; the click command only parses options.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from edgekd import __version__
from edgekd.artifacts import read_sidecar, write_text_atomic
from edgekd.bench.measure import ArtifactToMeasure, BenchSettings, measure_artifacts, measurement_context
from edgekd.bench.runners import runtime_for_path
from edgekd.errors import ConfigError, DataError, FileSystemError
from edgekd.report.core import SCHEMA_VERSION, judge
from edgekd.rundir import RECORDS

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

_PRECISION_WORDS = {"int8": "int8", "qdq": "int8", "fp16": "fp16", "half": "fp16", "fp32": "fp32"}


def describe(path: Path) -> dict:
    """name / model / precision / params of an artifact: its sidecar first, then its ONNX graph, then its name."""
    side = read_sidecar(path)
    graph_precision, params = _onnx_facts(path)
    words = path.name.lower().replace("-", ".").replace("_", ".").split(".")
    model = side.get("model") or next((w for w in words if w in ("teacher", "student")), None)
    precision = side.get("precision") or graph_precision or next(
        (_PRECISION_WORDS[w] for w in words if w in _PRECISION_WORDS), None
    )
    name = side.get("name") or path.name.rsplit(".", 1)[0]
    return {"name": name, "model": model, "precision": precision, "params": params}


def _onnx_facts(path: Path) -> tuple[str | None, int | None]:
    """(precision, parameter count) read from an ONNX graph; (None, None) without the onnx package."""
    if path.suffix != ".onnx":
        return None, None
    try:
        import onnx
    except ImportError:  # onnx is optional on a device; fall back to the sidecar and file name
        return None, None
    from edgekd.onnxtools.read import load_onnx

    graph = load_onnx(path).graph  # RuntimeBackendError (exit 6) for a truncated or non-ONNX file
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # Scales and zero points of Q/DQ nodes are quantization metadata, not parameters.
    qparams = {n.input[i] for n in qdq for i in (1, 2) if len(n.input) > i}
    params = sum(int(np.prod(t.dims)) for t in graph.initializer if t.name not in qparams)
    if qdq or any(n.op_type in ("QLinearConv", "ConvInteger", "MatMulInteger") for n in graph.node):
        return "int8", params
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "fp16", params
    return "fp32", params


def _read_val(data: Path) -> tuple[dict, tuple[int, ...]]:
    with np.load(data, allow_pickle=False) as npz:
        if "x" not in npz.files or "y" not in npz.files:
            raise DataError(f"{data} must hold arrays `x` (N, C, H, W) and `y` (N,).", "Use a run's data/test.npz.")
        shape, n = tuple(npz["x"].shape[1:]), len(npz["y"])
    return {"path": str(data), "samples": n}, shape


def bench_artifacts(
    paths: list[Path],
    target: "TargetProfile | None" = None,
    data: Path | None = None,
    settings: BenchSettings = BenchSettings(),
    input_shape: tuple[int, ...] | None = None,
) -> dict:
    """A device report (report.json schema) for artifact files measured on this machine."""
    from edgekd.bench.sysinfo import machine_info

    dataset, data_shape = _read_val(data) if data is not None else ({}, None)
    info = [describe(p) for p in paths]
    names = _unique([i["name"] for i in info])
    todo = [ArtifactToMeasure(n, runtime_for_path(p), p) for n, p in zip(names, paths)]
    measured = measure_artifacts(todo, input_shape or data_shape, target, settings, data)
    measurement = measurement_context(target, settings)
    rows = [_row(p, n, i, measured[n], target, measurement) for p, n, i in zip(paths, names, info)]
    _compare_to_teacher(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "edgekd_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": "device",
        "target": target.model_dump() if target is not None else None,
        "dataset": dataset,
        "machine": machine_info(),
        "measurement": measurement,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
        "artifacts": rows,
    }


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _row(path: Path, name: str, info: dict, m, target, measurement: dict) -> dict:
    row = {
        "name": name,
        "model": info["model"],
        "runtime": m.runtime,
        "precision": info["precision"],
        "path": str(path),
        "accuracy": None,
        "size_mb": path.stat().st_size / (1024 * 1024),
        "params": info["params"],
        "flops": None,
        **m.report_fields(),
    }
    # No teacher measured here: only latency and memory are judged on a device report, and only
    # when this machine is the target (its CPU architecture and runtime).
    row["budget"] = judge(row, target.model_dump(), None, measurement) if target else None
    row["budgets"] = {target.name: row["budget"]} if target else {}
    return row


def _compare_to_teacher(rows: list[dict]) -> None:
    """speedup / memory ratio against the fastest teacher row measured here, when there is one."""
    teachers = [r for r in rows if r["model"] == "teacher"]
    if not teachers:
        return
    ref = min(teachers, key=lambda r: r["latency_ms"]["p50"])
    for r in rows:
        r["speedup_vs_teacher"] = ref["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        if ref["peak_rss_mb"] > 0:
            r["memory_ratio_vs_teacher"] = r["peak_rss_mb"] / ref["peak_rss_mb"]


def claim_output(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite an earlier report: `out_dir` must be new or empty, unless `force`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileSystemError(f"--out {out_dir} is a file, not a folder.", "Choose a folder (it is created if missing).")
    earlier = sorted(p.name for p in out_dir.iterdir() if p.name != RECORDS) if out_dir.is_dir() else []
    if earlier and not force:
        raise ConfigError(f"--out {out_dir} already holds {', '.join(earlier[:4])}"
                          f"{' …' if len(earlier) > 4 else ''} (an earlier report).",
                          "Choose another --out, or pass --force to replace its report files.")


def write_device_report(report: dict, out_dir: Path, html: bool = False) -> list[Path]:
    from edgekd.report.merge import artifact_rows, markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json", out_dir / "report.md"]
    write_text_atomic(written[0], json.dumps(report, indent=1) + "\n")
    machine = report["machine"]
    md = [
        f"# edgekd device report: {machine.get('device') or machine.get('hostname')}",
        "",
        f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('os')}; "
        f"target `{(report.get('target') or {}).get('name', '-')}`; created {report['created']}.",
        "",
        markdown_table(artifact_rows(report)),
        "Latency is per call at batch 1; peak RSS is what the model added over its process's "
        "baseline after importing the runtime.",
        "",
    ]
    write_text_atomic(written[1], "\n".join(md))
    if html:
        from edgekd.report.html import write_html

        written.append(write_html(report, out_dir / "report.html"))
    return written


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}.", "E.g. 1,8.") from None
    return values


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", "-t", "target_name", default=None, help="Target profile (threads, budgets).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A run's data/test.npz (x, y: the test split its report's accuracy is on) to measure accuracy on.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-report"), show_default=True,
              help="Directory for report.json and report.md; must be new or empty unless --force.")
@click.option("--force", is_flag=True, help="Replace the report files of an earlier bench in --out.")
@click.option("--input-shape", default=None, help="C,H,W when the artifact does not fix it and no --data is given.")
@click.option("--batch-sizes", default="1,8", show_default=True)
@click.option("--warmup", "warmup_s", type=float, default=1.0, show_default=True, help="Seconds per batch size.")
@click.option("--iterations", "min_iterations", type=int, default=100, show_default=True)
@click.option("--seconds", "min_seconds", type=float, default=2.0, show_default=True)
@click.option("--rounds", type=int, default=5, show_default=True)
@click.option("--threads", type=int, default=None, help="Runtime threads (default: the target's).")
@click.option("--html", is_flag=True, help="Also write report.html (needs matplotlib).")
def bench_command(artifacts, target_name, data, out, force, input_shape, batch_sizes, warmup_s, min_iterations,
                  min_seconds, rounds, threads, html) -> None:
    """Benchmark ONNX files or TensorRT engines on this machine and write a device report."""
    from edgekd import rundir
    from edgekd.targets import load_target

    target = load_target(target_name) if target_name else None
    settings = BenchSettings(warmup_s, min_iterations, min_seconds, _ints(batch_sizes, "--batch-sizes"), rounds, threads)
    shape = _ints(input_shape, "--input-shape") if input_shape else None
    claim_output(out, force)
    with rundir.hold(out, "edgekd bench"):  # a concurrent bench into the same --out stops here
        claim_output(out, force)  # (checked again: another bench may have written it meanwhile)
        report = bench_artifacts(list(artifacts), target, data, settings, shape)
        written = write_device_report(report, out, html=html)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(Path(out, "report.md").read_text())
