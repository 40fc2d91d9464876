"""The built-in default, end to end: wall time and the report it produces.

    python benchmarks/digits_default.py [--out runs/bench-digits]

Runs `edgekd compress examples/digits.yaml --force` from scratch, then a second
time (every stage should be reused), and writes benchmarks/results/digits_default.md:
the machine, both wall times, and the report's artifact table. Run it on a quiet
machine: other processes skew the latency columns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed_compress(out: Path, force: bool) -> float:
    cmd = [sys.executable, "-m", "edgekd", "compress", str(REPO / "examples" / "digits.yaml"), "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(cmd + (["--force"] if force else []), check=True, cwd=REPO)
    return time.perf_counter() - started


def artifact_table(report_md: str) -> str:
    """The report's artifact table: the paragraph that starts with its header row (the paragraphs before it,
    target and gate lines, grow as the report learns to say more)."""
    for block in report_md.split("\n\n"):
        if block.startswith("| artifact"):
            return block
    raise SystemExit("report.md has no artifact table (a line starting '| artifact'): has its layout changed?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-digits")
    parser.add_argument("--result", type=Path, default=REPO / "benchmarks" / "results" / "digits_default.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    first = timed_compress(args.out, force=True)
    second = timed_compress(args.out, force=False)
    report = json.loads((args.out / "report.json").read_text())
    rows = {a["name"]: a for a in report["artifacts"]}
    int8, teacher = rows["student-int8-x86"], rows["teacher-fp32"]
    machine = report["machine"]
    table = artifact_table((args.out / "report.md").read_text())
    args.result.write_text(
        "# Built-in default (`edgekd compress examples/digits.yaml`)\n\n"
        f"Reproduce: `python benchmarks/digits_default.py`. Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"{machine.get('os')}; edgekd {report['edgekd_version']}, {report['created']}; 1-minute load average "
        f"{load_before:.2f} before the first run, {os.getloadavg()[0]:.2f} after the second (other jobs skew "
        "wall time and latency).\n\n"
        f"- First run, from scratch: **{first:.0f} s** wall (goal: about 3 minutes on a 2-core CPU).\n"
        f"- Second run, unchanged config: **{second:.1f} s** wall, every stage reused.\n"
        f"- INT8 student vs FP32 teacher (ONNX Runtime): p50 {int8['latency_ms']['p50']:.3f} ms vs "
        f"{teacher['latency_ms']['p50']:.3f} ms ({teacher['latency_ms']['p50'] / int8['latency_ms']['p50']:.1f}× faster); "
        f"accuracy {int8['accuracy']:.4f} vs {teacher['accuracy']:.4f} "
        f"(drop {teacher['accuracy'] - int8['accuracy']:+.4f}, bound {report['target']['budgets']['max_accuracy_drop']}).\n"
        f"- Recommended: {report['recommended']['name'] if report.get('recommended') else 'none'} "
        f"({report['recommended']['why'] if report.get('recommended') else ''}).\n\n"
        f"{table}\n"
    )
    print(args.result.read_text())


if __name__ == "__main__":
    main()
