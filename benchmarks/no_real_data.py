"""A whole `edgekd compress` with no real labelled data (data.kind: synthetic), beside the real-data run it
stands in for: wall time, what the run reports (agreement, never accuracy), and — scored here, outside
the run, which never sees a real label — how the synthetic-only student does on the real test split.

    nice -n 10 python benchmarks/no_real_data.py [--out runs/bench-noreal]

1. `edgekd compress` of the built-in digits config (examples/digits.yaml: a resnet18 teacher trained on
   the real images, a derived student distilled from it): the reference, and the teacher checkpoint.
2. `edgekd compress` with `data.kind: synthetic`: the same teacher checkpoint, its 10 classes and
   1x32x32 input only; DAFL transfer images (with the BN prior), `holdout` of them held out for choices.
3. Outside the runs: run 2's student.onnx (and its INT8 file) on run 1's data/test.npz.

Writes benchmarks/results/no_real_data.{md,json} with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Short on purpose (a compress-level row on a shared 2-core machine): the student distils for DISTILL_EPOCHS in
# both runs and bench takes fewer samples; the teacher and data are examples/digits.yaml's.
DISTILL_EPOCHS = 5
BENCH = {"warmup_s": 0.5, "min_iterations": 50, "min_seconds": 1.0, "batch_sizes": [1], "rounds": 3}
SYNTHETIC = {"method": "dafl", "count": 1280, "holdout": 256, "seed": 0, "rounds": 200, "batch_size": 64,
             "generator_width": 32, "bn": 1.0}


def compress(config: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgekd", "compress", str(config), "--out", str(out), "--quiet"],
                   check=True, cwd=REPO)
    return time.perf_counter() - started


def no_real_config(reference: dict, teacher: Path) -> dict:
    """The reference config with every real-data key replaced by what a user without data has."""
    data = reference["data"]
    config = {k: v for k, v in reference.items() if k not in ("data", "teacher", "quantize")}
    config["name"] = "digits-noreal"
    config["data"] = {"kind": "synthetic", "classes": 10, "input_size": data["input_size"],
                      "channels": data["channels"], "synthetic": SYNTHETIC}
    config["teacher"] = {"model": reference["teacher"]["model"], "checkpoint": str(teacher)}
    config["distill"] = {**reference["distill"], "losses": [{"kind": "kd", "temperature": 4.0, "alpha": 1.0}]}
    return config


def short(config: dict) -> dict:
    """The config with the short distillation and bench settings (the teacher and data untouched)."""
    distill = {**config["distill"], "train": {**config["distill"]["train"], "epochs": DISTILL_EPOCHS}}
    return {**config, "distill": distill, "bench": BENCH}


def score_on_real(run: Path, test_npz: Path) -> dict:
    """Each ONNX student file of a run, top-1 on the real test split (the run itself cannot do this)."""
    import numpy as np

    from edgekd.runtime.ort import accuracy, make_session, predict

    with np.load(test_npz) as npz:
        x, y = npz["x"], npz["y"]
    return {f.name: accuracy(predict(make_session(f, threads=1), x), y) for f in sorted(run.glob("student*.onnx"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-noreal")
    parser.add_argument("--result", type=Path, default=REPO / "benchmarks" / "results" / "no_real_data")
    args = parser.parse_args()
    from edgekd.bench.sysinfo import machine_info

    load_before = os.getloadavg()
    real_run, noreal_run = args.out / "real", args.out / "noreal"
    reference = short(yaml.safe_load((REPO / "examples" / "digits.yaml").read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real.yaml").write_text(yaml.safe_dump(reference))
    real_s = compress(args.out / "real.yaml", real_run)
    config_path = args.out / "noreal.yaml"
    config_path.write_text(yaml.safe_dump(no_real_config(reference, real_run / "teacher.safetensors")))
    noreal_s = compress(config_path, noreal_run)
    real, noreal = (json.loads((r / "report.json").read_text()) for r in (real_run, noreal_run))
    student = noreal["student"]
    offline = score_on_real(noreal_run, real_run / "data" / "test.npz")
    rows = {a["name"]: a for a in real["artifacts"]}
    result = {
        "machine": machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "synthetic": SYNTHETIC, "distill_epochs": DISTILL_EPOCHS, "bench": BENCH,
        "wall_s": {"real": round(real_s, 1), "no_real": round(noreal_s, 1)},
        "real_run": {name: rows[name]["accuracy"] for name in rows},
        "no_real_run": {"student_val_teacher_agreement": student["val_teacher_agreement"],
                        "reported_accuracy": [a["accuracy"] for a in noreal["artifacts"]],
                        "int8_gate": noreal["quantization"].get("gate_measure"),
                        "int8_agreement": [f.get("val_accuracy") for f in noreal["quantization"].get("files", [])],
                        "generation_s": noreal["synthetic"]["seconds"]},
        "no_real_student_on_real_test": offline,
    }
    args.result.with_suffix(".json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    test_n = real["dataset"]["test_file"]["samples"]
    lines = [
        "# A compress run with no real labelled data (`data.kind: synthetic`)", "",
        f"Reproduce: `nice -n 10 python benchmarks/no_real_data.py`. Machine: {m.get('cpu')}, {m.get('cores')} cores "
        f"(shared with other jobs: load average {load_before[0]:.1f} before, {result['load_average_after'][0]:.1f} "
        f"after), edgekd {real['edgekd_version']}, {real['created']}.", "",
        "| run | what it had | wall s | the run reports | student on the real test split (scored here) |",
        "|---|---|---:|---|---:|",
        f"| real (examples/digits.yaml, distill {DISTILL_EPOCHS} epochs) | 1438 labelled train images | {real_s:.0f} "
        "| student-fp32 accuracy "
        f"{rows['student-fp32']['accuracy']:.4f}, teacher {rows['teacher-pytorch']['accuracy']:.4f} "
        f"({test_n} test images) | {rows['student-fp32']['accuracy']:.4f} |",
        f"| no real data | run 1's teacher.safetensors, 10 classes, 1x32x32 | {noreal_s:.0f} | accuracy unmeasured; "
        f"agreement with the teacher on {SYNTHETIC['holdout']} held-out synthetic images "
        f"{student['val_teacher_agreement']:.4f} | {offline.get('student.onnx', float('nan')):.4f} |", "",
        f"Transfer set: {SYNTHETIC['count']} DAFL images ({SYNTHETIC['count'] - SYNTHETIC['holdout']} train, "
        f"{SYNTHETIC['holdout']} held out), generated in {noreal['synthetic']['seconds']:.0f} s; settings "
        f"`{json.dumps(SYNTHETIC)}`. INT8 gate of the no-real run: {result['no_real_run']['int8_gate']}: "
        f"{result['no_real_run']['int8_agreement']}. Every student file of the no-real run on the real test split "
        f"(scored by this script, not by the run): {json.dumps({k: round(v, 4) for k, v in offline.items()})}.", "",
        "The run without data never reads a real label: the last column is this benchmark's check of how much of "
        "the real-data student's accuracy the synthetic-only one recovers. Wall times are on a shared machine; the "
        "real run's wall time excludes the teacher epochs an interrupted first attempt had already trained (its "
        "teacher resumed from them).", "",
    ]
    args.result.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
