"""`edgekd profile` for a TensorRT target (a Jetson): each candidate built into an engine, then timed there.

    build: edgekd.trt.build.build_engine(candidate.onnx, engines/<name>.engine, precision=..., target=...)
    time:  edgekd.trt.engine.load_runner(engine).benchmark(batch 1, warm-up, >= iterations and seconds)

What each precision is built from (edgekd.trt.compat.onnx_variant, weakly typed networks: TensorRT 8.5 and
10.x): fp32 and fp16 engines from the candidate's FP32 file (fp16: BuilderFlag.FP16, TensorRT picks the
kernels), int8 from its QDQ file quantized in TensorRT's form (explicit quantization, symmetric S8). A table
entry records end-to-end latency (copies + compute, as `edgekd bench-engine` reports it) as `latency_ms`,
GPU compute time beside it, the engine's scratch memory as `device_memory_mb`, and the build time.

Torch-free. tensorrt is imported once, before the first build: a device without it gets the
RuntimeBackendError of `edgekd.trt.build.import_tensorrt` (what to install) before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgekd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.bench.measure import BenchSettings
    from edgekd.search.profile import ProfileItem
    from edgekd.targets import TargetProfile

ENGINE_DIR = "engines"  # beside the latency table: a re-run reuses nothing but is easy to inspect
# candidate precision -> the file it is built from (edgekd.search.candidates: "fp32" file, or the INT8 QDQ file)
BUILT_FROM = {"fp32": "fp32", "fp16": "fp32", "int8": "int8"}


def engine_path(engine_dir: Path, item: "ProfileItem") -> Path:
    return Path(engine_dir) / f"{item.name}.engine"


def check_items(items: list["ProfileItem"], target: "TargetProfile | None") -> None:
    """Before any build: a TensorRT target to build for, and precisions it lists and TensorRT builds."""
    if target is None or target.runtime != "tensorrt":
        raise ConfigError("Timing TensorRT candidates needs the Jetson target they are for (TensorRT version, GPU, "
                          "DLA core).", "Pass --target NAME (e.g. jetson-orin-nano), or profile a candidate bundle "
                          "made for that target: its manifest names it.")
    unknown = sorted({i.precision for i in items} - set(BUILT_FROM))
    if unknown:
        raise ConfigError(f"TensorRT builds fp32, fp16 or int8 engines; {', '.join(unknown)} is none of them.",
                          "Profile candidates made by `edgekd search-bundle` for this target.")
    missing = sorted({i.precision for i in items} - set(target.precisions))
    if missing:
        raise ConfigError(f"Target {target.name!r} does not list precision {', '.join(missing)}.",
                          f"Use candidates in {', '.join(target.precisions)}.")


def measure_items_trt(items: list["ProfileItem"], settings: "BenchSettings", target: "TargetProfile | None",
                      engine_dir: Path, on_entries: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Build and time every item (batch 1), one at a time: a GPU runs one engine's benchmark at a time."""
    from edgekd.trt.build import build_engine, import_tensorrt
    from edgekd.trt.engine import load_runner

    check_items(items, target)
    import_tensorrt()  # no TensorRT here: its install hint, before anything is built
    entries = []
    for item in items:
        engine = engine_path(engine_dir, item)
        engine.parent.mkdir(parents=True, exist_ok=True)
        built = build_engine(item.path, engine, precision=item.precision, target=target)
        with load_runner(engine) as runner:
            timed = runner.benchmark(1, warmup_s=settings.warmup_s, duration_s=settings.min_seconds * settings.rounds,
                                     min_iterations=settings.min_iterations)
        entries.append(table_entry(item, built, timed))
        if on_entries is not None:
            on_entries(entries[-1:])
    return entries


def table_entry(item: "ProfileItem", built: dict, timed: dict) -> dict:
    """A latency-table entry from `build_engine`'s sidecar and `EngineRunner.benchmark`'s result."""
    return {"name": item.name, "file": item.path.name, "sha256": item.sha256, "arch_id": item.arch_id,
            "precision": item.precision, "input_size": item.input_size, "latency_ms": timed["latency_ms"],
            "gpu_compute_ms": timed["gpu_compute_ms"], "peak_rss_mb": None,
            "device_memory_mb": timed["context_device_memory_bytes"] / 2**20, "engine_bytes": timed["engine_bytes"],
            "load_s": built["build_seconds"], "iterations": timed["iterations"],
            "tensorrt": timed["tensorrt"], "engine_precision": built["precision"]}
