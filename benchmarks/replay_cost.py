"""What augmented distillation costs per epoch on this CPU: live teacher vs the K-view replay cache.

Issue #13 item 5 target: augmented distillation with the replay cache costs at most 1.3x a plain
augmented epoch of the same student. Three trainings of the 86K-parameter derived student
(ResNet-18 at width 0.125, depth 0.5) on a stratified share of Fashion-MNIST at 32 px, all with
the function-matching augmentation (reflect-padded crop, flip, mixup + cutmix; views drawn in the
DataLoader worker, mixing on the collated batch):

    plain    the student alone: cross-entropy on the mixed soft labels, no teacher
    live     KL to a ResNet-18 teacher run live on every mixed batch (distill.replay_views: 0)
    replay   the same KL, the teacher's logits replayed from the K-view cache (distill.replay_views: K),
             after the cache is built; the build (K teacher passes) is timed apart

The cache is built first (timed). Then `--rounds` rounds each train one epoch of every row, in turn
(plain, replay, live), from the same initial weights: rows measured side by side, so a change in the
shared machine's load hits all of them. The epoch time is the trainer's own (training plus a
validation pass over `--val-images`, the same in every row); the figure is a row's fastest round (a
shared machine only ever makes an epoch slower), all rounds are in the JSON. The teacher's weights are random: cost, not accuracy, is
measured here (a teacher's FLOPs do not depend on its weights).

    nice -n 10 python benchmarks/replay_cost.py            # ~7 min on 2 busy cores
Results: benchmarks/results/replay_cost.{json,md}, with the CPU and the load around the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from edgekd.bench.sysinfo import machine_info  # noqa: E402
from edgekd.config import DataConfig, KDConfig, StudentConfig, TrainConfig  # noqa: E402
from edgekd.data import load_data, stratified_subsample  # noqa: E402
from edgekd.data.splitset import TensorSplit  # noqa: E402
from edgekd.distill.losses import build_objective, cross_entropy  # noqa: E402
from edgekd.distill.recipes import DISTILL_RECIPES  # noqa: E402
from edgekd.distill.replay import ReplayTeacher  # noqa: E402
from edgekd.distill.trainer import train  # noqa: E402
from edgekd.models.io import build  # noqa: E402
from edgekd.models.stats import count_params  # noqa: E402
from edgekd.models.student import student_spec  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 1.3  # replay epoch / plain augmented epoch (issue #13 item 5)
AUGMENT = DISTILL_RECIPES["function_matching"]["train"]["augment"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--train-images", type=int, default=10_000)
    p.add_argument("--val-images", type=int, default=1_000)
    p.add_argument("--views", type=int, default=4, help="K of the replay cache")
    p.add_argument("--rounds", type=int, default=3, help="one epoch of every row per round")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="DataLoader processes drawing the views")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--out", type=Path, default=HERE / "results" / "replay_cost")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    data = load_data(DataConfig(kind="idx", path=args.data, input_size=32, channels=1, workers=args.workers))
    rows = stratified_subsample(data.train_y, args.train_images, 0)
    train_split = TensorSplit(data.train_x[rows], data.train_y[rows], workers=args.workers)
    val_rows = stratified_subsample(data.val_y, args.val_images, 0)
    val = (torch.from_numpy(data.val_x[val_rows]), torch.from_numpy(data.val_y[val_rows]))
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=3e-3, warmup_epochs=0.0,
                      channels_last=False, augment=AUGMENT)
    kwargs = {"num_classes": 10, "in_chans": 1}
    arch, student_kwargs = student_spec(StudentConfig(width=0.125, depth=0.5), "resnet18", kwargs)

    def student():
        torch.manual_seed(0)
        return build(arch, student_kwargs)

    torch.manual_seed(1)
    teacher = build("resnet18", kwargs).eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        replay = ReplayTeacher(teacher, work / "cache" / "replay.npy", args.views, len(rows))
        rows_run = {
            "plain": lambda w: train(student(), train_split, val, cfg, cross_entropy(), w, key="plain"),
            "replay": lambda w: _distil(student(), teacher, train_split, val, cfg, w, replay),
            "live": lambda w: _distil(student(), teacher, train_split, val, cfg, w, _live(teacher)),
        }
        history = {name: [] for name in rows_run}
        for r in range(args.rounds):  # round 0's replay epoch builds the cache first (timed apart)
            for name, run in rows_run.items():
                history[name] += run(work / f"{name}{r}").history
                print(f"round {r + 1}/{args.rounds} {name}: {history[name][-1]['seconds']:.2f} s", flush=True)
        results = {name: _row(h) for name, h in history.items()}
        results["replay"].update(replay.summary())
    report = _report(args, results, count_params(student()), count_params(teacher), load_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


def _distil(student, teacher, split, val, cfg, work, teacher_fn):
    objective = build_objective([KDConfig(alpha=1.0, temperature=1.0)], student=student, teacher=teacher,
                                input_shape=(1, 32, 32))
    return train(student, split, val, cfg, objective, work, key=work.name, teacher=teacher_fn)


def _live(teacher):
    """The pipeline's live teacher: no graph, float logits of the very batch the student gets."""

    def logits(_idx, inputs):
        with torch.no_grad():
            return teacher(inputs).float()

    return logits


def _row(history: list[dict]) -> dict:
    seconds = [h["seconds"] for h in history]
    return {"epoch_seconds": [round(s, 2) for s in seconds], "best_epoch_s": round(min(seconds), 2),
            "data_wait": [h["data_wait"] for h in history]}


def _report(args, rows: dict, student_params: int, teacher_params: int, load_before) -> dict:
    plain, live, replay = (rows[k]["best_epoch_s"] for k in ("plain", "live", "replay"))
    saved = live - replay
    return {
        "what": "seconds per augmented epoch (function-matching views + mixup/cutmix) of the 86K student on "
                "Fashion-MNIST 32 px: alone, distilled from a live ResNet-18, distilled from the K-view replay cache",
        "machine": machine_info(), "shared_machine": True,
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before],
                                "after": [round(v, 2) for v in os.getloadavg()]},
        "settings": {"train_images": args.train_images, "val_images": args.val_images, "views": args.views,
                     "rounds": args.rounds, "batch_size": args.batch_size, "workers": args.workers,
                     "torch_threads": args.threads, "augment": AUGMENT, "loss": "kd alpha 1, T 1",
                     "student_params": student_params, "teacher": "resnet18", "teacher_params": teacher_params},
        "rows": rows,
        "ratios": {"replay_vs_plain": round(replay / plain, 3), "live_vs_plain": round(live / plain, 3),
                   "target_replay_vs_plain": TARGET_RATIO, "met": replay / plain <= TARGET_RATIO},
        "replay_cache": {"build_seconds": rows["replay"]["build_seconds"], "disk_mb": rows["replay"]["disk_mb"],
                         "epochs_to_pay_back": round(rows["replay"]["build_seconds"] / saved, 2) if saved > 0 else None},
    }


def _markdown(r: dict) -> str:
    s, rows, m = r["settings"], r["rows"], r["machine"]
    lines = ["# Augmented distillation: live teacher vs the K-view replay cache", "",
             f"Measured with `benchmarks/replay_cost.py` on {m['cpu']} ({m['usable_cores']} usable cores), a machine "
             f"shared with other jobs (load average before {r['load_average_1_5_15']['before']}, after "
             f"{r['load_average_1_5_15']['after']}); torch {m['versions']['torch']}, {s['torch_threads']} torch "
             f"thread(s), {s['workers']} DataLoader worker(s) drawing the views.", "",
             f"{s['train_images']:,} Fashion-MNIST training images at 32 px (stratified), batch {s['batch_size']}, "
             f"the function-matching augmentation ({s['augment']}), {s['student_params']:,}-parameter student, "
             f"ResNet-18 teacher ({s['teacher_params']:,} parameters, random weights: cost only), K = {s['views']} "
             f"views. Each row's fastest of {s['rounds']} one-epoch rounds, the rows taking turns in every round (an epoch "
             f"includes a {s['val_images']:,}-image validation pass).", "",
             "| row | s/epoch | x plain | data wait |", "|---|---:|---:|---:|"]
    for name, label in (("plain", "student alone (augmented)"), ("live", "kd, live teacher"),
                        ("replay", f"kd, replay cache (K={s['views']})")):
        row = rows[name]
        lines.append(f"| {label} | {row['best_epoch_s']:.2f} | {row['best_epoch_s'] / rows['plain']['best_epoch_s']:.2f} "
                     f"| {max(row['data_wait']):.0%} |")
    c, q = r["replay_cache"], r["ratios"]
    lines += ["", f"Replay cache: built in {c['build_seconds']:.1f} s ({s['views']} teacher passes over the views), "
              f"{c['disk_mb']:.2f} MB on disk (fp16 logits, {s['views']} x {s['train_images']:,} x 10); it pays for itself "
              f"after {c['epochs_to_pay_back']} epochs against the live teacher.", "",
              f"Target (issue #13 item 5): replay <= {q['target_replay_vs_plain']}x a plain augmented epoch: "
              f"{q['replay_vs_plain']}x, **{'met' if q['met'] else 'not met'}** (live teacher: {q['live_vs_plain']}x).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - start:.0f} s")
