"""`edgekd compress` with `student.search` on the digits default: the search fits the student to a budget.

    nice -n 10 python benchmarks/search_compress.py [--out runs/bench-search]

The built-in digits config (examples/digits.yaml) with its hand-picked student replaced by a
search over ResNet-18-derived students (widths 0.25/0.5/1 x depths 0.5/1, FP32 and INT8),
measured on this host, ranked by a 2-epoch proxy distillation on a quarter of the rows.

Run 1: the target is this host with a loose budget (host-cpu's 50 ms): every candidate fits, and
the proxy ranking picks the most accurate. Run 2, in the same run directory: the budget is cut
so that run 1's winner no longer fits while the fastest candidate still does (the limit
margin x budget is set to the geometric mean of the fastest p50 and the winner's fastest precision's p50). The search
re-ranks (nothing is measured or proxy-trained again: the cache) and distils another student.

For each run the result shows every candidate (p50, proxy accuracy, fits or why not), the
choice, and the chosen student as `edgekd compress`'s own bench stage measured it afterwards
(`edgekd bench`'s settings, side by side with the teacher), against the budget. Writes
benchmarks/results/search_compress.{md,json}.

    nice -n 10 python benchmarks/search_compress.py --sizes 32 16 [--out runs/bench-search-sizes]

Several input sizes in one compress (its own run directory; runs 1 and 2 are kept from the JSON): a smaller grid
(widths 0.25/0.5, depth 0.5, FP32 and INT8) at each size. A first `edgekd compress` with a budget nothing meets
measures every candidate and stops before the teacher trains (exit 2, measurements kept); the budget is then set
just under the fastest candidate at the largest size (the limit at the geometric mean of that p50 and the next
faster one), so only smaller-size candidates fit, and the second `edgekd compress` re-measures nothing, chooses
among them, and distils, exports, quantizes and benchmarks the winner at its size (ONNX input shape recorded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEARCH = """student:
  search:
    widths: [0.25, 0.5, 1.0]
    depths: [0.5, 1.0]
    precisions: [fp32, int8]
    proxy_epochs: 2
    proxy_fraction: 0.25
    margin: 0.9
"""
TARGET = """name: budget-cpu
description: this host (as host-cpu) with the budget under test
runtime: onnxruntime
arch: x86_64
threads: 2
precisions: [fp32, int8]
max_opset: 21
graph_optimization_level: all
budgets: {{latency_ms: {budget}, memory_mb: 1024, max_accuracy_drop: 0.02, max_int8_drop: 0.02}}
"""


SIZES_SEARCH = """student:
  search:
    widths: [0.25, 0.5]
    depths: [0.5]
    input_sizes: [{sizes}]
    precisions: [fp32, int8]
    proxy_epochs: 2
    proxy_fraction: 0.25
    margin: 0.9
"""


def write_config(folder: Path, budget_ms: float, search: str = SEARCH) -> Path:
    digits = (REPO / "examples" / "digits.yaml").read_text()
    student = re.search(r"^student:.*?\n(?=\S)", digits, flags=re.S | re.M)
    text = digits[:student.start()] + search + "\n" + digits[student.end():]
    target = folder / "budget-cpu.yaml"
    target.write_text(TARGET.format(budget=f"{budget_ms:.6g}"))
    text = text.replace("targets: [host-cpu]", f"targets: [{target}]")
    text = text.replace("calib/digits.yaml", str(REPO / "edgekd" / "builtin" / "calib" / "digits.yaml"))
    config = folder / "digits-search.yaml"
    config.write_text(text)
    return config


def compress(config: Path, out: Path, force: bool, allowed: tuple[int, ...] = (0, 5)) -> float:
    cmd = [sys.executable, "-m", "edgekd", "compress", str(config), "--out", str(out)] + (["--force"] if force else [])
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode not in allowed:  # 5: a gate failed (reported in the run), the search result still stands
        raise SystemExit(f"edgekd compress exited {done.returncode}")
    return time.perf_counter() - started


def summarise(out: Path, wall_s: float) -> dict:
    report = json.loads((out / "report.json").read_text())
    section = report["search"]
    chosen = next(c for c in section["candidates"] if c["name"] == section["chosen"])
    precision = f"student-{chosen['precision']}"  # an INT8 file's name carries its scheme: student-int8-x86
    row = next(a for a in report["artifacts"] if a["name"] == precision or a["name"].startswith(precision + "-"))
    records = {s: json.loads((out / ".edgekd" / f"{s}.json").read_text()) for s in ("search", "choose", "student")}
    return {"budget_ms": section["budget_ms"], "limit_ms": section["limit_ms"], "chosen": section["chosen"],
            "chosen_candidate": chosen, "bench_p50_ms": row["latency_ms"]["p50"], "bench_accuracy": row["accuracy"],
            "student_val_accuracy": records["student"]["result"]["val_accuracy"],
            "student_init": records["student"]["result"].get("init"),
            "within_budget": row["latency_ms"]["p50"] <= section["budget_ms"], "section": section,
            "wall_s": round(wall_s, 1), "stage_seconds": {s: r["seconds"] for s, r in records.items()},
            "machine": report["machine"], "measurement": report.get("measurement")}


def candidate_table(section: dict) -> list[str]:
    lines = ["| candidate | params (K) | MFLOPs | p50 ms | proxy val acc | fits |", "|---|---:|---:|---:|---:|---|"]
    for c in sorted(section["candidates"], key=lambda c: c["p50_ms"]):
        name = f"**{c['name']}**" if c["name"] == section["chosen"] else c["name"]
        proxy = "—" if c["proxy_accuracy"] is None else f"{c['proxy_accuracy']:.4f}"
        fits = "yes" if c["fits"] else f"no: {c['why_not']}"
        lines.append(f"| {name} | {c['params'] / 1e3:.0f} | {c['flops'] / 1e6:.1f} | {c['p50_ms']:.4f} | {proxy} | {fits} |")
    return lines


def run_lines(title: str, run: dict) -> list[str]:
    s, c = run["section"], run["chosen_candidate"]
    cost = s["cost"]
    return [f"## {title}", "",
            f"Budget {run['budget_ms']:.4g} ms, limit (margin {s['margin']:g}) {run['limit_ms']:.4g} ms. "
            f"Chosen: **{run['chosen']}** (search p50 {c['p50_ms']:.4f} ms, proxy val accuracy "
            f"{c['proxy_accuracy']:.4f}). Distilled fully from its proxy run: val accuracy "
            f"{run['student_val_accuracy']:.4f}; test accuracy of the shipped file {run['bench_accuracy']:.4f}.",
            "",
            f"Benchmarked afterwards by the run's bench stage (`edgekd bench` settings): student-{c['precision']} "
            f"p50 **{run['bench_p50_ms']:.4f} ms** — {'within' if run['within_budget'] else 'OVER'} the "
            f"{run['budget_ms']:.4g} ms budget.", "",
            f"Search cost: {cost['architectures']} candidates, {cost['measurements']} measurements "
            f"({cost['measured']} made, {cost['reused']} reused from the cache), {cost['scored']} proxy runs "
            f"({cost['score_s']:.0f} s; reused ones cost ~0). Wall time of this `edgekd compress`: {run['wall_s']:.0f} s "
            f"(stages: {', '.join(f'{k} {v:.0f} s' for k, v in run['stage_seconds'].items())}).", "",
            *candidate_table(s), ""]


def sizes_run(out: Path, sizes: list[int]) -> dict:
    """Several input sizes in one compress: measure all (a budget nothing meets), then a budget only smaller
    sizes meet, one compress that chooses the size and distils, exports and benchmarks at it."""
    import onnx

    search = SIZES_SEARCH.format(sizes=", ".join(map(str, sizes)))
    run_dir, load_before = out / "run", os.getloadavg()[0]
    compress(write_config(out, 0.0001, search), run_dir, force=True, allowed=(2,))  # measures, stops: none fits
    measured = json.loads((run_dir / "search" / "measured.json").read_text())
    p50 = sorted((j["row"]["p50_ms"], j["row"]["candidate"]["input_size"]) for j in measured["judged"])
    largest = max(sizes)
    first = next(i for i, (_, size) in enumerate(p50) if size == largest)  # the fastest candidate at that size
    if first == 0:
        raise SystemExit(f"the fastest candidate is at {largest} px: no budget leaves only smaller sizes ({p50})")
    limit = math.sqrt(p50[first - 1][0] * p50[first][0])
    run = summarise(run_dir, compress(write_config(out, limit / 0.9, search), run_dir, force=False))
    dims = [d.dim_value or d.dim_param for d in onnx.load(run_dir / "student.onnx").graph.input[0].type.tensor_type.shape.dim]
    report = json.loads((run_dir / "report.json").read_text())
    return {**run, "sizes": sizes, "student_onnx_input": dims, "student_test_file": report["dataset"]["test_file"],
            "load_average": [load_before, os.getloadavg()[0]]}


def sizes_lines(run: dict) -> list[str]:
    m, (before, after) = run["machine"], run["load_average"]
    return [f"## Run 3: input sizes {run['sizes']} in one compress", "",
            f"Measured on {m['cpu']} ({m['arch']}, {m['usable_cores']} usable cores, shared with other jobs: load "
            f"average {before:.1f} before, {after:.1f} after), onnxruntime {m['versions'].get('onnxruntime')}, "
            f"2 threads, batch 1. Reproduce: `nice -n 10 python benchmarks/search_compress.py --sizes "
            f"{' '.join(map(str, run['sizes']))}` (a first compress with a budget nothing meets measured every "
            "candidate and stopped before the teacher; this one re-measured nothing). The budget is set just under "
            f"the fastest {max(run['sizes'])}-px candidate, so only smaller inputs fit. The chosen student was trained, "
            f"exported (student.onnx input {run['student_onnx_input']}), quantized and benchmarked at its size, "
            f"scored on `{run['student_test_file']['path']}` ({run['student_test_file']['samples']} samples, the "
            "same rows as the teacher's data/test.npz).", "",
            *run_lines("Chosen", run)[2:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--result", type=Path, default=REPO / "benchmarks" / "results" / "search_compress")
    parser.add_argument("--sizes", type=int, nargs="+", help="several input sizes in one compress (run 3)")
    args = parser.parse_args()
    if args.sizes:
        out = args.out or REPO / "runs" / "bench-search-sizes"
        out.mkdir(parents=True, exist_ok=True)
        result = json.loads(args.result.with_suffix(".json").read_text())
        result["sizes_run"] = sizes_run(out, args.sizes)
        args.result.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        text = args.result.with_suffix(".md").read_text().split("\n## Run 3:")[0].rstrip("\n")
        text += "\n\n" + "\n".join(sizes_lines(result["sizes_run"]))
        args.result.with_suffix(".md").write_text(text)
        print(text)
        return
    args.out = args.out or REPO / "runs" / "bench-search"
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.out / "run"
    load_before = os.getloadavg()[0]

    loose = summarise(run_dir, compress(write_config(args.out, 50.0), run_dir, force=True))
    measured = {c["name"]: c["p50_ms"] for c in loose["section"]["candidates"]}
    arch = loose["chosen"].rsplit("-", 1)[0]  # the winner in every precision must miss: another student
    fastest = min(measured.values())
    winner = min(p for name, p in measured.items() if name.rsplit("-", 1)[0] == arch)
    if winner <= fastest:
        raise SystemExit(f"run 1 chose the fastest candidate ({loose['chosen']}): no tighter budget changes the choice")
    limit = math.sqrt(fastest * winner)
    tight = summarise(run_dir, compress(write_config(args.out, limit / 0.9), run_dir, force=False))

    m = loose["machine"]
    result = {"machine": m, "load_average": [load_before, os.getloadavg()[0]], "runs": [loose, tight]}
    args.result.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    head = [
        "# `edgekd compress` with `student.search` on the digits default: a student fitted to the budget", "",
        f"Measured on {m['cpu']} ({m['arch']}, {m['usable_cores']} usable cores, shared with other jobs: load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after), onnxruntime "
        f"{m['versions'].get('onnxruntime')}, torch {m['versions'].get('torch')}, 2 threads, batch 1, 32 px digits. "
        "Reproduce: `nice -n 10 python benchmarks/search_compress.py` (method in its docstring).", "",
        "Run 2 reuses run 1's run directory: its measurements and proxy runs come from the cache, so only the "
        "choice, the student and what follows it are redone. Absolute times move between runs on this shared "
        "machine; what counts is that the chosen student's later benchmark stays within the budget it was chosen for.",
        ""]
    text = "\n".join(head + run_lines("Run 1: loose budget (every candidate fits)", loose)
                     + run_lines("Run 2: a budget run 1's winner misses", tight))
    args.result.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
