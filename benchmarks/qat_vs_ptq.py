"""Post-training INT8 vs quantization-aware INT8 accuracy for the same distilled student.

Runs `edgekd compress` on examples/digits.yaml (or Fashion-MNIST with --fashion) with
`student: {quantization: qat}`, so one run holds, for ONE distilled float student:

- FP32:            student.onnx in ONNX Runtime
- PTQ (ORT):       student.int8.onnx — ONNX Runtime static INT8, minmax, per-channel,
                   calibrated on the calibration split; the accuracy gate's fallbacks are OFF
                   (max_int8_drop 1.0, fallbacks false) so this is plain PTQ
- PTQ (modelopt):  the modelopt fake-quantized student right after calibration, before any
                   QAT step (same quantizer placement as QAT; PyTorch, validation split)
- QAT:             student.qat.onnx — the same calibrated model after `distill.qat` epochs of
                   distillation with the quantizers in place, in ONNX Runtime

Every number is validation accuracy; drops are against the FP32 row. Note that QAT also
trains `distill.qat.epochs` more epochs, so part of a QAT gain over FP32 can be that.

    PYTHONPATH=. python benchmarks/qat_vs_ptq.py                   # digits, seeds 0 1 2
    PYTHONPATH=. python benchmarks/qat_vs_ptq.py --fashion [PATH]  # Fashion-MNIST (idx)

Writes benchmarks/results/qat_vs_ptq_<dataset>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
BENCH = {"warmup_s": 0.1, "min_iterations": 20, "min_seconds": 0.2, "batch_sizes": [1], "rounds": 2}


def config_for(dataset: str, seed: int, fashion_path: Path, qat_epochs: int) -> dict:
    cfg = yaml.safe_load((REPO / "examples" / "digits.yaml").read_text())
    cfg.update(name=f"qat-vs-ptq-{dataset}-{seed}", seed=seed, bench=BENCH)
    cfg["student"]["quantization"] = "qat"
    cfg["distill"]["qat"] = {"epochs": qat_epochs, "batch_size": cfg["distill"]["train"]["batch_size"],
                             "lr": cfg["distill"]["train"]["lr"] / 10, "warmup_epochs": 0}
    cfg["quantize"].update(calibration="calib/digits.yaml", max_int8_drop=1.0, fallbacks=False)  # edgekd's own manifest
    if dataset == "fashion-mnist":  # 60k images: fewer, larger-batch epochs (DESIGN.md: ~110 s/teacher epoch)
        cfg["data"] = {"kind": "idx", "path": str(fashion_path), "input_size": 28, "channels": 1}
        cfg["teacher"]["train"] = {"epochs": 3, "batch_size": 128, "lr": 0.002}
        cfg["distill"]["train"] = {"epochs": 6, "batch_size": 128, "lr": 0.003}
        cfg["distill"]["qat"].update(batch_size=128, lr=0.0003)
        cfg["quantize"]["calibration"] = "calib/fashion-mnist.yaml"
    return cfg


def run_one(cfg: dict, workdir: Path) -> dict:
    from edgekd.pipeline.compress import compress
    from edgekd.pipeline.engine import read_record
    from edgekd.ui import UI

    path = workdir / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.perf_counter()
    result = compress(path, out=workdir / cfg["name"], ui=UI(quiet=True))
    rows = {r["name"]: r for r in json.loads((result.run_dir / "report.json").read_text())["artifacts"]}
    qat = read_record(result.run_dir, "qat")["result"]
    return {"seed": cfg["seed"], "teacher": rows["teacher-fp32"]["accuracy"], "fp32": rows["student-fp32"]["accuracy"],
            "ptq_ort": rows["student-int8"]["accuracy"], "ptq_modelopt": qat["calibrated_accuracy"],
            "qat": rows["student-qat-int8"]["accuracy"], "qat_epochs": qat["epochs"],
            "qat_parity_max_abs_diff": qat["export"]["parity"]["max_abs_diff"],
            "p50_ms": {k: rows[k]["latency_ms"]["p50"] for k in ("student-fp32", "student-int8", "student-qat-int8")},
            "seconds": round(time.perf_counter() - started, 1)}


COLUMNS = [("teacher", "teacher FP32"), ("fp32", "student FP32"), ("ptq_ort", "PTQ INT8 (ORT)"),
           ("ptq_modelopt", "PTQ INT8 (modelopt, calibrated only)"), ("qat", "QAT INT8")]


def markdown(dataset: str, runs: list[dict], cfg: dict, machine: str) -> str:
    head = "| seed | " + " | ".join(title for _, title in COLUMNS) + " | QAT parity max\\|Δ\\| |"
    lines = [f"# PTQ vs QAT INT8 — {dataset}", "", _how(cfg), "", head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in runs:
        cells = [f"{r[k]:.4f}" for k, _ in COLUMNS]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r['qat_parity_max_abs_diff']:.3f} |")
    means = {k: statistics.mean(r[k] for r in runs) for k, _ in COLUMNS}
    lines.append("| mean | " + " | ".join(f"{means[k]:.4f}" for k, _ in COLUMNS) + " | |")
    lines += ["", "Drop vs the FP32 student (mean over seeds, positive = worse):", ""]
    for key, title in COLUMNS[2:]:
        drops = [r["fp32"] - r[key] for r in runs]
        lines.append(f"- {title}: {statistics.mean(drops):+.4f} (per seed: {', '.join(f'{d:+.4f}' for d in drops)})")
    lines += ["", "Batch-1 p50 latency in ONNX Runtime on this machine (ms, seed 0): "
              + ", ".join(f"{k} {v:.3f}" for k, v in runs[0]["p50_ms"].items()), "", f"Machine: {machine}."]
    return "\n".join(lines) + "\n"


def _how(cfg: dict) -> str:
    t, s, q = cfg["teacher"]["train"], cfg["distill"]["train"], cfg["distill"]["qat"]
    return (f"Made by `benchmarks/qat_vs_ptq.py`: teacher `{cfg['teacher']['model']}` trained {t['epochs']} epochs, "
            f"student width {cfg['student']['width']} / depth {cfg['student']['depth']} distilled {s['epochs']} "
            f"epochs (KD, T={cfg['distill']['losses'][0]['temperature']}), then QAT {q['epochs']} epochs at lr "
            f"{q['lr']:g} with modelopt INT8 fake quantizers (BN folded; per-channel weights, per-tensor "
            f"activations, symmetric; max calibration on the calibration split). PTQ (ORT) is onnxruntime "
            f"static INT8 (minmax, per-channel, QDQ) of the same FP32 student with no fallbacks. Input "
            f"{cfg['data']['input_size']}x{cfg['data']['input_size']}; all accuracies on the validation split.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", nargs="?", const=FASHION, type=Path, help="Fashion-MNIST idx folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (digits), 0 (fashion)")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgekd-qat-vs-ptq"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    import torch

    from edgekd.bench.sysinfo import machine_info

    torch.set_num_threads(1)
    dataset = "fashion-mnist" if args.fashion else "digits"
    seeds = args.seeds or ([0] if args.fashion else [0, 1, 2])
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        cfg = config_for(dataset, seed, args.fashion or FASHION, args.qat_epochs)
        runs.append(run_one(cfg, args.workdir))
        print(json.dumps(runs[-1]), flush=True)
    info = machine_info()
    machine = f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores, torch 1 thread"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"qat_vs_ptq_{dataset}.md").write_text(markdown(dataset, runs, cfg, machine))
    (args.results / f"qat_vs_ptq_{dataset}.json").write_text(json.dumps({"dataset": dataset, "runs": runs}, indent=2))
    print((args.results / f"qat_vs_ptq_{dataset}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
