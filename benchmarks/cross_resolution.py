"""A student with its own input (student.input_size / channels), end to end through `edgekd compress`.

    python benchmarks/cross_resolution.py [--out runs/bench-xres] [--epochs 4]

One teacher input (scikit-learn digits read at 16 px, RGB), three students of one architecture (test_resnet,
width 0.5, depth 1) distilled from it with cached logits: one at the teacher's input, one at 12 px grey, one at
8 px grey (the digits' own resolution). Each run is a whole compress (data, teacher, student, export with
parity, INT8 with its gate, bench, report); the teacher trains with the same seed in each. Writes
benchmarks/results/cross_resolution.{json,md}: per student its input, params, MFLOPs, test accuracy (FP32 and
INT8, each scored on its own view of the same test samples) and ONNX Runtime p50 at batch 1 on this CPU
(machine named; the load on the shared machine noted). Latencies are side by side in one session each; compare
ratios, not absolute times across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

STUDENTS = {"same input (16 px RGB)": {}, "12 px grey": {"input_size": 12, "channels": 1},
            "8 px grey": {"input_size": 8, "channels": 1}}


NOTE = ("The teacher is the same model in every row (same seed, same accuracy), timed in each run's own session: "
        "its p50 moving between rows is the shared machine's load; compare each student with its own row's teacher.")


def config_text(name: str, student: dict, epochs: int) -> str:
    own = "".join(f", {k}: {v}" for k, v in student.items())
    return f"""version: 1
name: {name}
data: {{kind: digits, input_size: 16, channels: 3}}
teacher:
  model: test_resnet
  train: {{epochs: {epochs}, batch_size: 64, lr: 0.01, warmup_epochs: 0}}
student: {{width: 0.5, depth: 1.0{own}}}
distill:
  train: {{epochs: {epochs}, batch_size: 64, lr: 0.01, warmup_epochs: 0}}
quantize: {{max_int8_drop: 0.05}}
targets: [host-cpu]
bench: {{warmup_s: 0.2, min_iterations: 50, min_seconds: 0.5, batch_sizes: [1], rounds: 3}}
"""


def run(out: Path, label: str, student: dict, epochs: int) -> dict:
    name = "xres-" + label.split(" (")[0].replace(" ", "-")
    config = out / f"{name}.yaml"
    config.write_text(config_text(name, student, epochs))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "edgekd", "compress", str(config), "--out", str(out / name), "--force"],
                   check=True, cwd=REPO, env=env)
    report = json.loads((out / name / "report.json").read_text())
    rows = {a["name"]: a for a in report["artifacts"]}
    pre = (report["dataset"].get("student_view") or report["dataset"])["preprocess"]
    fp32, int8, teacher = rows["student-fp32"], rows.get("student-int8-x86"), rows["teacher-fp32"]
    return {"student": label, "input": f"{pre['channels']}x{pre['input_size']}x{pre['input_size']}",
            "params": fp32["params"], "mflops": fp32["flops"] / 1e6, "accuracy_fp32": fp32["accuracy"],
            "accuracy_int8": int8["accuracy"] if int8 else None, "p50_fp32_ms": fp32["latency_ms"]["p50"],
            "p50_int8_ms": int8["latency_ms"]["p50"] if int8 else None, "teacher_accuracy": teacher["accuracy"],
            "teacher_p50_ms": teacher["latency_ms"]["p50"], "test_samples": fp32.get("accuracy_samples"),
            "machine": report["machine"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-xres")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--load-note", default="shared 2-core machine, other helpers' jobs running (nice 10)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(args.out, label, student, args.epochs) for label, student in STUDENTS.items()]
    machine = rows[0].pop("machine")
    for row in rows[1:]:
        row.pop("machine")
    results = REPO / "benchmarks" / "results"
    (results / "cross_resolution.json").write_text(json.dumps({"machine": machine, "load": args.load_note,
                                                              "epochs": args.epochs, "rows": rows}, indent=2))
    lines = ["# A student with its own input: cross-resolution / cross-channel distillation in `edgekd compress`",
             "", "Reproduce: `python benchmarks/cross_resolution.py`. Digits read at 16 px RGB for the teacher "
             f"(test_resnet, {args.epochs} epochs); each student test_resnet width 0.5 depth 1, {args.epochs} epochs "
             "of KD with cached teacher logits. Accuracy on the test split, each model on its own view of the same "
             f"{rows[0]['test_samples']} test samples. Machine: {machine.get('cpu')}, {machine.get('cores')} cores; "
             f"load: {args.load_note}. p50: ONNX Runtime, batch 1, host-cpu session settings.", "",
             "| student | input | params | MFLOPs | acc FP32 | acc INT8 | p50 FP32 ms | p50 INT8 ms | teacher acc "
             "| teacher p50 ms |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        int8_acc = f"{r['accuracy_int8']:.4f}" if r["accuracy_int8"] is not None else "—"
        int8_p50 = f"{r['p50_int8_ms']:.3f}" if r["p50_int8_ms"] is not None else "—"
        lines.append(f"| {r['student']} | {r['input']} | {r['params']:,} | {r['mflops']:.2f} "
                     f"| {r['accuracy_fp32']:.4f} | {int8_acc} | {r['p50_fp32_ms']:.3f} | {int8_p50} | {r['teacher_accuracy']:.4f} "
                     f"| {r['teacher_p50_ms']:.3f} |")
    lines += ["", NOTE]
    (results / "cross_resolution.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
