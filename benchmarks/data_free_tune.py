"""Tune the transfer-image methods of benchmarks/data_free.py on the validation split only.

For each method-settings mapping in CONFIGS (a JSON list), generate COUNT images from the
validation-run teacher (benchmarks/results/data_free_val/work/, trained by
`python benchmarks/data_free.py --score val --rows teacher real`), distil the benchmark's student
on them for EPOCHS epochs (KD T=4, crops and flips, live teacher), and score the 5k validation
split. One JSON line per config is appended to benchmarks/results/data_free_tuning.jsonl; the
test split is never read.

    python benchmarks/data_free_tune.py configs.json 512 30
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data_free as bench  # noqa: E402

from edgekd.distill.trainer import evaluate  # noqa: E402
from edgekd.models.io import load_model  # noqa: E402
from edgekd.synth import generate_transfer_set, parse_settings  # noqa: E402
from edgekd.ui import UI  # noqa: E402

LOG = bench.HERE / "results" / "data_free_tuning.jsonl"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    configs, count, epochs = json.loads(Path(argv[0]).read_text()), int(argv[1]), int(argv[2])
    torch.set_num_threads(1)
    args = bench.parse_args(["--score", "val", "--threads", "1"])
    data = bench.Data(args)
    work = bench.HERE / "results" / "data_free_val" / "work"
    teachers = sorted(work.glob("teacher-*.safetensors"))
    if not teachers:
        sys.exit(f"No teacher in {work}: run `python3 benchmarks/data_free.py --score val` first to train it.")
    teacher = load_model(teachers[0])
    for cfg in configs:
        started = time.perf_counter()
        student = bench.new_student() if cfg["method"] == "zskt" else None
        result = generate_transfer_set(teacher, parse_settings(cfg), count=count, shape=(1, 28, 28),
                                       mean=data.pre.mean, std=data.pre.std, cache_dir=work / "synth", seed=0,
                                       student=student, ui=UI(quiet=True))
        generation = time.perf_counter() - started
        x, y = bench.load_store(result, data.pre)
        with torch.no_grad():
            confidence = torch.softmax(teacher(x[:512]), 1).max(1).values.mean().item()
        started = time.perf_counter()
        model, _ = bench.distil(args, work, f"tune-{result.key[:8]}-{epochs}", teacher, x, y, data.monitor, epochs,
                                "crop_flip")
        line = {"cfg": cfg, "count": count, "epochs": epochs, "val": round(evaluate(model, data.val_x, data.val_y), 4),
                "conf": round(confidence, 3), "labels": result.index["label_counts"], "gen_s": round(generation),
                "distil_s": round(time.perf_counter() - started)}
        print(json.dumps(line), flush=True)
        with LOG.open("a") as fh:
            fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
