"""What a hostile config costs: `edgekd compress` on YAML alias bombs, timed and measured.

Each case runs `python -m edgekd compress CASE.yaml --out RUN` in a fresh child process (as a
user would) and records its exit code, wall time and peak resident memory (getrusage of the
child), next to `edgekd --version` as the cost of starting Python and edgekd at all. The run
directory must not exist afterwards: a refused config touches nothing.

    PYTHONPATH=. python benchmarks/config_bounds.py     # writes benchmarks/results/config_bounds.md/.json

Cases: "billion laughs" files of 5, 7 and 9 levels (9 aliases per level: 9**levels strings once
expanded; 9 levels is the ~300-byte file that took edgekd 0.1 3.1 GB and 30 s before a MemoryError),
a self-referencing alias, and 5,000 levels of nesting.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPEATS = 3


def bomb(levels: int) -> str:
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = [f'{names[0]}: &{names[0]} [{",".join(["lol"] * 9)}]']
    lines += [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


CASES = {
    "billion laughs, 5 levels (59k strings)": bomb(5),
    "billion laughs, 7 levels (4.8M strings)": bomb(7),
    "billion laughs, 9 levels (387M strings)": bomb(9),
    "self-referencing alias": "a: &a [1, *a]\n",
    "5,000 levels of nesting": "x: " + "[" * 5000 + "]" * 5000 + "\n",
}

# Runs one command in a grandchild and prints its exit code, wall time and peak RSS as JSON: the
# child's RUSAGE_CHILDREN then covers exactly that one process.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)
print(json.dumps({"rc": proc.returncode, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "message": (proc.stderr or proc.stdout).strip()[:300], "message_bytes": len(proc.stderr)}))
"""


def measure(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "edgekd", *args],
                                      capture_output=True, text=True, env=env, cwd=REPO, check=True).stdout)
            for _ in range(REPEATS)]
    return {"rc": runs[0]["rc"], "seconds_median": statistics.median(r["seconds"] for r in runs),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs), "message": runs[0]["message"],
            "message_bytes": runs[0]["message_bytes"]}


def main() -> None:
    from edgekd.bench.sysinfo import machine_info

    rows = {"edgekd --version (start-up cost)": {**measure(["--version"]), "run_dir_created": False}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in CASES.items():
            config = Path(tmp) / "case.yaml"
            config.write_text(text)
            out = Path(tmp) / "run"
            rows[name] = {**measure(["compress", str(config), "--out", str(out)]), "bytes": len(text),
                          "run_dir_created": out.exists()}
    result = {"machine": machine_info(), "repeats": REPEATS, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
              "load_average_1min": round(os.getloadavg()[0], 1), "rows": rows}
    folder = REPO / "benchmarks" / "results"
    (folder / "config_bounds.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "config_bounds.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Hostile configs: `edgekd compress` on YAML alias bombs", "",
             f"Measured {result['created']} on {m['cpu']} ({m['usable_cores']} usable cores, {m['memory_mb']} MB), "
             f"load average {result['load_average_1min']} (a shared machine: wall times are inflated alike), "
             f"Python {m['python']}, edgekd {m['versions']['edgekd']}; median wall time and largest peak RSS of "
             f"{result['repeats']} runs, each `python -m edgekd ...` in a fresh process. Reproduce: "
             "`PYTHONPATH=. python benchmarks/config_bounds.py`.", "",
             "| case | file bytes | exit | wall s | peak RSS MB | message bytes | run dir created |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r.get('bytes', '-')} | {r['rc']} | {r['seconds_median']:.2f} | "
                     f"{r['peak_rss_mb_max']:.0f} | {r['message_bytes']} | {'yes' if r['run_dir_created'] else 'no'} |")
    lines += ["", "Messages (first run):", ""]
    lines += [f"- {name}: `{r['message'][:200]}`" for name, r in result["rows"].items() if name != next(iter(result["rows"]))]
    lines += ["", "The start-up row is the floor every command pays (interpreter, click, pydantic); the bounded "
              "reader adds little to it. edgekd 0.1 took 3.1 GB and 30 s on the 9-level file, then exited 1 "
              "with a MemoryError (issue #17).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
