"""Where a ResNet student's INT8 time goes on this CPU, and whether a float stem would help.

Issue #12 asks the ResNet-derived student's INT8 file to run >= 2.0x faster than FP32. This probe
takes the FP32 student that benchmarks/int8_speed.py left in its --work folder (and that run's
calibration images) and builds, with ONNX Runtime's own quantizer (quant_pre_process, then
quantize_static QDQ, U8 activations, S8 per-channel weights, MinMax; the scheme edgekd's gate
picks for host-cpu here, within 1% of its p50 in int8_speed.md):

- int8:             every node quantized
- int8, stem float: the first convolution (the one reading the 224-px image) kept in float
- int8, stem+pool float: that convolution and the MaxPool after it kept in float

and times them beside the FP32 file (edgekd.bench.measure: each file in its own process,
interleaved rounds), then profiles each (edgekd.quantize.profile: median kernel time per node)
to show the largest kernel (the stem) and which kernels the float variants pay for.

    python benchmarks/int8_stem_probe.py --work /tmp/edgekd-int8-speed --max-load 1.6 --name int8_stem_probe_epyc_avx2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from int8_speed import SIZE, cpu_int8_flags, ort_int8, wait_for_quiet  # noqa: E402  (the script beside this one)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/edgekd-int8-speed"),
                   help="benchmarks/int8_speed.py's --work folder (resnet18/fp32.onnx, calib.npy)")
    p.add_argument("--family", default="resnet18")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--name", default="int8_stem_probe", help="results file name, without suffix")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-load", type=float, default=None,
                   help="wait (up to 20 min) for the 1-minute load average to fall below this")
    return p.parse_args(argv)


def stem_nodes(model) -> tuple[str, str | None]:
    """(the Conv that reads the graph input, the MaxPool fed by it through an activation or None)."""
    graph = model.graph
    image = graph.input[0].name
    stem = next(n for n in graph.node if n.op_type == "Conv" and n.input[0] == image)
    consumers = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            consumers[name].append(n)
    after = consumers[stem.output[0]]
    if len(after) == 1 and after[0].op_type in ("Relu", "Clip", "HardSwish"):
        after = consumers[after[0].output[0]]
    pool = after[0].name if len(after) == 1 and after[0].op_type == "MaxPool" else None
    return stem.name, pool


def make_variants(fp32: Path, calib: np.ndarray, folder: Path) -> dict[str, tuple[Path, list[str]]]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType

    stem, pool = stem_nodes(onnx.load(str(fp32)))  # quant_pre_process keeps these node names
    float_sets = {"int8": [], "int8, stem float": [stem]}
    if pool:
        float_sets["int8, stem+pool float"] = [stem, pool]
    variants = {"fp32": (fp32, [])}
    for label, kept in float_sets.items():
        out = folder / (label.replace(", ", "-").replace(" ", "-").replace("+", "-") + ".onnx")
        ort_int8(fp32, out, calib, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                 weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=kept)
        variants[label] = (out, kept)
    return variants


def timed(variants: dict, threads: int, rounds: int) -> dict[str, float]:
    from edgekd.bench.measure import ArtifactToMeasure, BenchSettings, measure_artifacts
    from edgekd.targets import load_target

    settings = BenchSettings(warmup_s=1.0, min_iterations=100, min_seconds=2.0, batch_sizes=(1,),
                             rounds=rounds, threads=threads)
    measured = measure_artifacts([ArtifactToMeasure(label, "onnxruntime", path) for label, (path, _) in variants.items()],
                                 input_shape=(3, SIZE, SIZE), target=load_target("host-cpu"), settings=settings)
    return {label: measured[label].latency_ms["p50"] for label in variants}


def profiled(path: Path, x1: np.ndarray, workdir: Path) -> dict:
    """Kernel time per op type, and the largest single kernel (the stem's, in every file measured so far:
    ORT renames fused nodes, e.g. FP32's stem runs as `/act1/Relu_output_0_nchwc`, so it is found by time)."""
    from edgekd.quantize.profile import profile_model
    from edgekd.targets import load_target

    nodes = profile_model(path, x1, workdir, target=load_target("host-cpu"))
    by_op = defaultdict(float)
    for node in nodes:
        by_op[node.op_type] += node.us
    largest = max(nodes, key=lambda node: node.us)
    return {"kernel_total_us": round(sum(by_op.values()), 1),
            "largest_kernel": {"node": largest.name, "op": largest.op_type, "us": round(largest.us, 1)},
            "by_op_us": {op: round(us, 1) for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# INT8 stem probe: {results['family']} student, where the INT8 time goes",
        "",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores, int8 flags: {', '.join(results['cpu_int8_flags'])}; "
        f"onnxruntime {m['versions'].get('onnxruntime')}; {results['threads']} threads, batch 1, 3x{SIZE}x{SIZE}",
        f"- Load average (1 min) before/after timing: {results['load_before']} / {results['load_after']}",
        "- Files: ONNX Runtime's quantize_static (QDQ, U8 activations, S8 per-channel weights) of the FP32 student "
        "in int8_speed.py's work folder; `kept float` names the nodes excluded from quantization.",
        "- p50: edgekd.bench.measure, each file in its own process, interleaved rounds. Kernel times: ORT's profiler, "
        "median per node over batch-1 runs (profiling adds its own overhead: compare kernels, not wall times).",
        "",
        "| file | kept float | p50 ms | speed-up vs FP32 | kernel total us | largest kernel (us) | top op types (us) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    base = results["rows"]["fp32"]["p50_ms"]
    for label, row in results["rows"].items():
        prof = row["profile"]
        big = prof["largest_kernel"]
        top = ", ".join(f"{op} {us:.0f}" for op, us in list(prof["by_op_us"].items())[:4])
        kept = ", ".join(f"`{n}`" for n in row["kept_float"]) or "-"
        lines.append(f"| {label} | {kept} | {row['p50_ms']:.3f} | {base / row['p50_ms']:.2f}x | "
                     f"{prof['kernel_total_us']:.0f} | `{big['node']}` {big['op']} {big['us']:.0f} | {top} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from edgekd.bench.sysinfo import machine_info

    args = parse_args(argv)
    fp32 = args.work / args.family / "fp32.onnx"
    if not fp32.exists():
        raise SystemExit(f"{fp32} not found: run benchmarks/int8_speed.py --families {args.family} --work {args.work} first")
    calib = np.load(args.work / "calib.npy", mmap_mode="r")
    with tempfile.TemporaryDirectory(prefix="edgekd-stem-probe-") as tmp:
        folder = Path(tmp)
        variants = make_variants(fp32, calib, folder)
        load_before = wait_for_quiet(args.max_load)
        p50 = timed(variants, args.threads, args.rounds)
        load_after = round(os.getloadavg()[0], 2)
        x1 = np.ascontiguousarray(calib[:1], dtype=np.float32)
        rows = {label: {"p50_ms": p50[label], "kept_float": kept, "profile": profiled(path, x1, folder)}
                for label, (path, kept) in variants.items()}
    results = {"machine": machine_info(), "cpu_int8_flags": cpu_int8_flags(), "family": args.family, "threads": args.threads,
               "load_before": load_before, "load_after": load_after, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
