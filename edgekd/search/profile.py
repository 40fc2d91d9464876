"""`edgekd profile`: time candidate ONNX files on this device, write a latency table (torch-free).

    edgekd profile BUNDLE_OR_ONNX... -o table.json [--target T] [--threads N]
    edgekd profile --probe          # one JSON line: runtime and machine (the ssh backend asks first)

Each file runs in its own worker process (`edgekd.bench.measure`, as `edgekd
bench` does), `group` files at a time with rounds interleaved across them, batch 1
only. The table is rewritten atomically after every group. A table grows: a run
with an existing `-o` measured with the same runtime, machine and settings keeps
its entries and measures only files it does not hold (matched by SHA-256), so an
interrupted run continues and a new bundle adds to an old table.

A table says what it was measured with (runtime name and version, arch, CPU,
threads, input sizes); `edgekd.search.backends.table` refuses one that does not
match the target. Runs with numpy + onnxruntime only: nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from edgekd import __version__
from edgekd.artifacts import sha256_file, write_json_atomic
from edgekd.bench.measure import ArtifactToMeasure, BenchSettings, measure_artifacts
from edgekd.errors import DataError, RuntimeBackendError

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

TABLE_FORMAT = "edgekd.latency-table/1"
BUNDLE_KIND = "search-candidates"  # manifest.json `kind` of a candidate bundle (edgekd.search.bundle)
METADATA_KEY = "edgekd.search"  # ONNX metadata_props key of a candidate file: {arch_name, arch_id, input_size}
# Batch 1 only, shorter than `edgekd bench`'s defaults: a search times tens of files.
SEARCH_BENCH = BenchSettings(warmup_s=0.5, min_iterations=50, min_seconds=1.0, batch_sizes=(1,), rounds=3)
GROUP = 8  # files measured side by side: each is a live process holding its model
INSTALL_HINT = 'pip install "edgekd[ort]"'
TRT_INSTALL_HINT = ("JetPack ships TensorRT for the system Python (python3-libnvinfer): run edgekd with that Python "
                    "or a venv made with --system-site-packages, and set the target's edgekd_command to it")


@dataclass(frozen=True)
class ProfileItem:
    name: str
    path: Path
    precision: str
    input_size: int | None
    arch_id: str | None  # the candidate's architecture hash, when the file says
    sha256: str


# ------------------------------------------------------------------ probe
def probe() -> dict:
    """What the search needs to know before measuring here: runtime (None when missing) and machine."""
    from edgekd.bench.sysinfo import machine_info

    try:
        from edgekd.runtime.ort import import_ort

        runtime = {"name": "onnxruntime", "version": import_ort().__version__}
    except RuntimeBackendError:
        runtime = {"name": "onnxruntime", "version": None}
    machine = machine_info()
    return {"edgekd_version": __version__, "runtime": runtime, "tensorrt": _tensorrt_version(),
            "arch": machine["arch"], "cpu": machine["cpu"], "cores": machine["cores"], "device": machine["device"],
            "python": machine["python"]}


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:  # most devices: ONNX Runtime only
        return None
    return tensorrt.__version__


def runtime_or_raise(found: dict, where: str = "this machine", runtime: str = "onnxruntime") -> dict:
    """`found` (a probe) with `runtime` as what its candidates are timed with; RuntimeBackendError without it."""
    if runtime == "tensorrt":
        if not found.get("tensorrt"):
            raise RuntimeBackendError(f"{where} has no TensorRT (the tensorrt Python module): TensorRT candidates "
                                      "are built into engines and timed on the device that runs them.",
                                      f"{TRT_INSTALL_HINT}; or measure on the Jetson offline (edgekd search-bundle, "
                                      "then edgekd profile there).")
        return {**found, "runtime": {"name": "tensorrt", "version": found["tensorrt"]}}
    if not found["runtime"]["version"]:
        raise RuntimeBackendError(f"{where} has no onnxruntime: the candidates cannot be timed there.",
                                  f"Install it there: {INSTALL_HINT} (or `pip install onnxruntime`).")
    return found


# ------------------------------------------------------------------ what to measure
def items_from(paths: list[Path]) -> list[ProfileItem]:
    """Candidate bundles (directories) and plain ONNX files, as items with unique names."""
    items: list[ProfileItem] = []
    for path in paths:
        items += bundle_items(path) if Path(path).is_dir() else [file_item(Path(path))]
    names = [i.name for i in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"Several inputs are named {', '.join(twice)}.", "Profile each file once.")
    return items


def bundle_items(bundle: Path) -> list[ProfileItem]:
    """The candidates of a bundle whose every file matches its manifest hash."""
    from edgekd.ship.verify import check_hashes, read_manifest

    manifest = read_manifest(bundle)
    if manifest.get("kind") != BUNDLE_KIND:
        raise DataError(f"{bundle} is a model bundle, not a candidate bundle.",
                        "Give its ONNX files instead: edgekd profile BUNDLE/*.onnx -o table.json.")
    check_hashes(bundle, manifest["files"])
    return [ProfileItem(c["name"], bundle / c["file"], c["precision"], c["input_size"], c["arch_id"],
                        manifest["files"][c["file"]]) for c in manifest["candidates"]]


def file_item(path: Path) -> ProfileItem:
    """A plain ONNX file: what it is from its metadata (candidates carry it), else from its graph."""
    if path.suffix != ".onnx":
        raise DataError(f"{path} is not an ONNX file or a candidate bundle directory.",
                        "Give .onnx files or bundle directories.")
    meta, shape = _onnx_facts(path)
    info = json.loads(meta.get(METADATA_KEY, "{}"))
    precision = json.loads(meta["edgekd.precision"]) if "edgekd.precision" in meta else _precision(path)
    size = info.get("input_size") or (shape[-1] if shape and isinstance(shape[-1], int) else None)
    base = info.get("arch_name") or path.name.split(".")[0]
    return ProfileItem(f"{base}-{precision}", path, precision, size, info.get("arch_id"), sha256_file(path))


def _onnx_facts(path: Path) -> tuple[dict, list]:
    """(metadata_props, input shape) read through onnxruntime, the one library a device has."""
    from edgekd.runtime.ort import import_ort

    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a quick look, not a run
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise RuntimeBackendError(f"ONNX Runtime could not load {path}: {exc}", "Check the file.") from None
    return dict(session.get_modelmeta().custom_metadata_map), list(session.get_inputs()[0].shape)


def _precision(path: Path) -> str:
    from edgekd.bench.cli import describe

    return describe(path)["precision"] or "fp32"


# ------------------------------------------------------------------ measure
def measure_items(
    items: list[ProfileItem],
    threads: int,
    settings: BenchSettings = SEARCH_BENCH,
    group: int = GROUP,
    target: "TargetProfile | None" = None,
    on_entries: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Time every item (batch 1) in groups of `group` isolated processes; one table entry each."""
    if group < 1:
        raise DataError(f"group must be at least 1, got {group}.", "Use e.g. 8.")
    settings = replace(settings, batch_sizes=(1,), threads=threads)
    entries = []
    for start in range(0, len(items), group):
        chunk = items[start:start + group]
        todo = [ArtifactToMeasure(i.name, "onnxruntime", i.path) for i in chunk]
        measured = measure_artifacts(todo, None, target, settings)
        done = [_entry(i, measured[i.name]) for i in chunk]
        entries += done
        if on_entries is not None:
            on_entries(done)
    return entries


def _entry(item: ProfileItem, m) -> dict:
    return {"name": item.name, "file": item.path.name, "sha256": item.sha256, "arch_id": item.arch_id,
            "precision": item.precision, "input_size": item.input_size, "latency_ms": m.latency_ms,
            "peak_rss_mb": m.peak_rss_mb, "load_s": m.load_s, "iterations": m.batch_sweep["1"]["iterations"]}


def table_header(threads: int, settings: BenchSettings, target: "TargetProfile | None" = None,
                 runtime: str = "onnxruntime") -> dict:
    found = runtime_or_raise(probe(), runtime=runtime)
    return {
        "format": TABLE_FORMAT,
        "edgekd_version": __version__,
        "runtime": found["runtime"],
        "machine": {k: found[k] for k in ("arch", "cpu", "cores", "device")},
        "threads": threads,
        "graph_optimization_level": target.graph_optimization_level if target is not None else "all",
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()
                     if k not in ("threads", "timeout_s")},
    }


_SAME_CONDITIONS = ("format", "runtime", "machine", "threads", "graph_optimization_level", "settings")


def profile(
    items: list[ProfileItem],
    out: Path,
    threads: int,
    settings: BenchSettings = SEARCH_BENCH,
    group: int = GROUP,
    target: "TargetProfile | None" = None,
    log: Callable[[str], None] = lambda _: None,
    runtime: str = "onnxruntime",
) -> dict:
    """Measure `items` into the latency table at `out` with `runtime`, continuing an earlier table made alike
    (TensorRT: each item built into an engine under engines/ beside the table first)."""
    settings = replace(settings, batch_sizes=(1,))
    header = table_header(threads, settings, target, runtime)
    earlier = _earlier_entries(Path(out), header)
    done = {e["sha256"] for e in earlier}
    todo = [i for i in items if i.sha256 not in done]
    renamed = {i.name for i in todo}  # a file measured again under a name replaces that name's old entry
    entries = [e for e in earlier if e["name"] not in renamed]
    if len(todo) < len(items):
        log(f"{len(items) - len(todo)} of {len(items)} files already in {out}; measuring {len(todo)}")

    def save(measured: list[dict]) -> None:
        entries.extend(measured)
        _write_table(Path(out), header, entries)
        log(f"measured {len(measured)} more: " + ", ".join(f"{e['name']} {e['latency_ms']['p50']:.3f} ms"
                                                        for e in measured))

    _write_table(Path(out), header, entries)
    if runtime == "tensorrt":
        from edgekd.search.trt_timing import ENGINE_DIR, measure_items_trt

        measure_items_trt(todo, settings, target, Path(out).parent / ENGINE_DIR, on_entries=save)
    else:
        measure_items(todo, threads, settings, group, target, on_entries=save)
    return json.loads(Path(out).read_text())


def _earlier_entries(out: Path, header: dict) -> list[dict]:
    """Entries of an existing table at `out` measured under the same conditions (none otherwise)."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(earlier, dict) or any(earlier.get(k) != header[k] for k in _SAME_CONDITIONS):
        return []
    return list(earlier.get("entries", []))


def _write_table(out: Path, header: dict, entries: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = sorted({e["input_size"] for e in entries if e["input_size"] is not None})
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out, {**header, "created": created, "input_sizes": sizes, "entries": entries})


def bundle_target(paths: list[Path]) -> "TargetProfile | None":
    """The target the first candidate bundle among `paths` was made for (its manifest), else None."""
    from edgekd.ship.verify import read_manifest
    from edgekd.targets import TargetProfile

    for path in paths:
        if Path(path).is_dir():
            found = read_manifest(path).get("target")
            return TargetProfile.model_validate(found) if found else None
    return None


def default_threads(paths: list[Path], target: "TargetProfile | None") -> int:
    """The target's threads, else those of the first candidate bundle's target, else 0 (runtime default)."""
    if target is not None:
        return target.threads
    from edgekd.ship.verify import read_manifest

    for path in paths:
        if Path(path).is_dir():
            return int((read_manifest(path).get("target") or {}).get("threads") or 0)
    return 0


# ------------------------------------------------------------------ command
@click.command("profile")
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The latency table to write (continued if it exists and was measured alike).")
@click.option("--target", "-t", "target_name", default=None, help="Target profile (threads, graph optimization).")
@click.option("--threads", type=int, default=None, help="Runtime threads (default: the target's, else the bundle's).")
@click.option("--warmup", "warmup_s", type=float, default=SEARCH_BENCH.warmup_s, show_default=True)
@click.option("--iterations", "min_iterations", type=int, default=SEARCH_BENCH.min_iterations, show_default=True)
@click.option("--seconds", "min_seconds", type=float, default=SEARCH_BENCH.min_seconds, show_default=True)
@click.option("--rounds", type=int, default=SEARCH_BENCH.rounds, show_default=True)
@click.option("--group", type=int, default=GROUP, show_default=True, help="Files measured side by side.")
@click.option("--probe", "probe_only", is_flag=True, help="Print this device's runtime and machine as JSON, then exit.")
def profile_command(inputs, out, target_name, threads, warmup_s, min_iterations, min_seconds, rounds, group,
                    probe_only) -> None:
    """Time candidate ONNX files (or candidate bundles) here and write a latency table for student.search."""
    if probe_only:
        click.echo(json.dumps(probe()))
        return
    if not inputs or out is None:
        raise click.UsageError("give candidate bundles or ONNX files and -o TABLE.json (or --probe)")
    from edgekd.targets import load_target

    target = load_target(target_name) if target_name else None
    settings = BenchSettings(warmup_s, min_iterations, min_seconds, (1,), rounds)
    settings.check()
    items = items_from(list(inputs))
    threads = default_threads(list(inputs), target) if threads is None else threads
    made_for = target or bundle_target(list(inputs))
    runtime = made_for.runtime if made_for is not None else "onnxruntime"
    table = profile(items, out, threads, settings, group, made_for if runtime == "tensorrt" else target,
                    log=lambda m: click.echo(m, err=True), runtime=runtime)
    click.echo(f"wrote {out}: {len(table['entries'])} measurements, {runtime} {table['runtime']['version']}, "
               f"{table['machine']['cpu']}, {threads} threads")
