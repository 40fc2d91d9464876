"""Distillation on Fashion-MNIST: one teacher, one small student, every loss family.

Rows: the teacher (ResNet-18, cross-entropy); the student (a derived ResNet-18 at
width 0.125 / depth 0.5, 86K parameters) trained alone; the student with each
loss family (kd, dkd, fitnets, at, rkd; the feature and relation losses are
paired with cross-entropy); KD from a student initialised by pruning the
teacher; the response-loss schemes (kd with reverse / symmetric KL, kd with
alpha and temperature scheduled over training, teacher-free Tf-KD, and kd with
half the training images used without labels — the teacher there is the shared
one, trained on every label); the multi-pass schemes (edgekd.distill.schemes): a
teacher-assistant chain, born-again generations, and online mutual learning of
two peers (the peer with the better monitor accuracy is kept); and Hinton et al.'s
3%-of-data experiment: the student on a seeded, class-stratified 3% of the
training images with hard labels vs the same 3% with the teacher's soft targets
(the teacher trained on 100%), both given the optimizer steps of a full-data row.
Everything trains on the 48k training images edgekd's data layer leaves after
carving a 12k validation split (data.val_fraction 0.2), is monitored on 1k of
those validation images (the only choice, the online peer, is made there), and
is scored once, after the last epoch, on the official 10k test images, which no
choice sees. (The committed results were measured before that split existed:
on all 60k training images, monitored on the first 1k test images.)

    python benchmarks/distill_loss_families.py --quick     # smoke run: 512 images, 1 epoch, ~1-2 min
    python benchmarks/distill_loss_families.py             # full run; rows print their epoch time

The committed table (benchmarks/results/distill_fashion_mnist.md) is what a 2-core CPU
finishes in about an hour: a half-width ResNet-18 teacher and fewer epochs,

    python benchmarks/distill_loss_families.py --teacher-width 0.5 --teacher-epochs 6 --epochs 6 --input-size 28

Results: benchmarks/results/distill_fashion_mnist.{md,json} (`--quick`: *_quick.*).
Each finished row is saved under benchmarks/results/distill_fashion_mnist[_quick]/<row>.json
and skipped on a re-run with the same settings; an interrupted row resumes from
its last finished epoch (edgekd's trainer checkpoints every epoch).

Data: Debian's dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`),
or --data pointing at a folder of the four *-ubyte.gz files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from edgekd.config import DataConfig, DistillConfig, StudentConfig, TrainConfig  # noqa: E402
from edgekd.data import load_data, student_split  # noqa: E402
from edgekd.distill.losses import build_objective, cross_entropy  # noqa: E402
from edgekd.distill.schemes import plan_chain, run_chain, train_peers  # noqa: E402
from edgekd.distill.trainer import evaluate, predict_logits, train  # noqa: E402
from edgekd.models.io import build, load_model, save_checkpoint  # noqa: E402
from edgekd.models.prune import init_from_teacher  # noqa: E402
from edgekd.models.stats import count_flops, count_params  # noqa: E402
from edgekd.models.student import student_spec  # noqa: E402
from edgekd.schema import parse  # noqa: E402

HERE = Path(__file__).resolve().parent
TEACHER_ARCH = "resnet18"
STUDENT = StudentConfig(width=0.125, depth=0.5)  # 86K parameters: channels 8-64, one block per stage


@dataclass
class Row:
    name: str
    losses: list[dict] = field(default_factory=list)  # empty: the teacher row (cross-entropy)
    init: str = "random"
    train_fraction: float = 1.0  # the student's seeded, class-stratified share of the training images
    unlabeled_fraction: float = 0.0  # of that share, used without labels (label -1)
    same_steps: bool = False  # epochs / train_fraction: as many optimizer steps as a full-data row
    assistants: list[dict] = field(default_factory=list)  # TAKD: StudentConfig overrides per assistant
    generations: int = 1  # born-again networks
    peers: int = 0  # > 0: online deep mutual learning among this many students (no teacher)


ROWS = [
    Row("teacher"),
    Row("student alone", [{"kind": "ce"}]),
    Row("kd", [{"kind": "kd", "temperature": 4.0, "alpha": 0.9}]),
    Row("dkd", [{"kind": "ce"}, {"kind": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 8.0}]),
    Row("fitnets", [{"kind": "ce"}, {"kind": "fitnets"}]),
    Row("at", [{"kind": "ce"}, {"kind": "at", "beta": 1000.0}]),
    Row("rkd", [{"kind": "ce"}, {"kind": "rkd", "distance_weight": 25.0, "angle_weight": 50.0}]),
    Row("kd + init: teacher", [{"kind": "kd", "temperature": 4.0, "alpha": 0.9}], init="teacher"),
    Row("kd reverse KL", [{"kind": "kd", "temperature": 4.0, "alpha": 0.9, "divergence": "reverse"}]),
    Row("kd symmetric KL", [{"kind": "kd", "temperature": 4.0, "alpha": 0.9, "divergence": "symmetric"}]),
    Row("kd alpha 0.9->0.5 / T 8->2", [{"kind": "kd", "alpha": 0.9, "alpha_end": 0.5, "temperature": 8.0,
                                        "temperature_end": 2.0, "schedule": "linear"}]),
    Row("tfkd (no teacher)", [{"kind": "tfkd", "a": 0.9, "temperature": 20.0, "alpha": 0.9}]),
    Row("kd + 50% unlabeled", [{"kind": "kd", "temperature": 4.0, "alpha": 0.9}], unlabeled_fraction=0.5),
    Row("TAKD: teacher -> assistant (width 0.25) -> student", [{"kind": "kd", "temperature": 4.0, "alpha": 0.9}],
        assistants=[{"width": 0.25}]),
    Row("born-again x2", [{"kind": "kd", "temperature": 4.0, "alpha": 0.9}], generations=2),
    Row("online DML (2 peers)", peers=2),
    Row("3% of data, hard labels", [{"kind": "ce"}], train_fraction=0.03, same_steps=True),
    Row("3% of data, soft targets", [{"kind": "kd", "temperature": 4.0, "alpha": 1.0}], train_fraction=0.03,
        same_steps=True),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 512 train / 256 test images, 1 epoch each")
    p.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--teacher-width", type=float, default=1.0, help="channel multiplier of the ResNet-18 teacher")
    p.add_argument("--epochs", type=int, default=15, help="student epochs per row")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--rows", nargs="*", help="run only these rows (names as in the table)")
    args = p.parse_args(argv)
    if args.quick:
        args.teacher_epochs = args.epochs = 1
    return args


def settings(args) -> dict:
    """What decides a row's result: a saved row is reused only when these match."""
    return {"quick": args.quick, "splits": "train 48k / val 12k carved / official test", "teacher_epochs": args.teacher_epochs, "epochs": args.epochs,
            "batch_size": args.batch_size, "input_size": args.input_size, "teacher": TEACHER_ARCH, "teacher_width": args.teacher_width,
            "student": STUDENT.model_dump()}


def load(args):
    """(train, monitor, test) tensor pairs: monitoring on the validation split, the test split is
    Fashion-MNIST's own 10k."""
    data = load_data(DataConfig(kind="idx", path=args.data, input_size=args.input_size, channels=1))
    tx, ty = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    vx, vy = torch.from_numpy(data.val_x), torch.from_numpy(data.val_y)
    sx, sy = torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)
    if args.quick:
        tx, ty, vx, vy, sx, sy = tx[:512], ty[:512], vx[:256], vy[:256], sx[:256], sy[:256]
    return (tx, ty), (vx[:1000], vy[:1000]), (sx, sy), data.num_classes


def train_cfg(epochs: int, lr: float, batch_size: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=min(1.0, epochs / 4))


def epoch_printer(name: str, epochs: int):
    started = time.perf_counter()

    def progress(loss, val_acc, img_s):
        done = getattr(progress, "done", 0) + 1
        progress.done = done
        per_epoch = (time.perf_counter() - started) / done
        print(f"  [{name}] epoch {done}/{epochs}: loss {loss:.4f}, monitor acc {val_acc:.4f}, {img_s} img/s, "
              f"{per_epoch:.1f} s/epoch, row ETA {per_epoch * (epochs - done):.0f} s", flush=True)

    return progress


def teacher_spec(args, kwargs: dict) -> tuple[str, dict]:
    """ResNet-18, or at --teacher-width a ResNet-18 with that channel multiplier (all blocks kept):
    on a 2-core CPU the full teacher costs ~4x the epoch time of the half-width one."""
    if args.teacher_width == 1.0:
        return TEACHER_ARCH, kwargs
    return student_spec(StudentConfig(width=args.teacher_width, depth=1.0), TEACHER_ARCH, kwargs)


def run_teacher(args, dirs, train_xy, monitor_xy, num_classes) -> tuple[torch.nn.Module, dict]:
    kwargs = {"num_classes": num_classes, "in_chans": 1}
    torch.manual_seed(0)
    arch, kwargs = teacher_spec(args, kwargs)
    model = build(arch, kwargs)
    cfg = train_cfg(args.teacher_epochs, 2e-3, args.batch_size)
    result = train(model, train_xy, monitor_xy, cfg, cross_entropy(), dirs / "work" / "teacher", key=json.dumps(settings(args)),
                   progress=epoch_printer("teacher", cfg.epochs))
    save_checkpoint(dirs / "teacher.safetensors", model, arch, kwargs)
    return model.eval(), {"seconds_per_epoch": result.seconds_per_epoch, "epochs": result.epochs_run,
                          "losses": "ce", "init": "random"}


def teacher_logits(dirs: Path, teacher, train_x) -> tuple[torch.Tensor, float]:
    """Logits of the whole training set, once (what edgekd's cache does for logit-only losses)."""
    path = dirs / "teacher_logits.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)  # tensors and a float: nothing to unpickle
        return saved["logits"], saved["seconds"]
    started = time.perf_counter()
    logits = predict_logits(teacher, train_x)
    seconds = time.perf_counter() - started
    torch.save({"logits": logits, "seconds": seconds}, path)
    return logits, seconds


def run_student(args, row: Row, dirs, teacher, cached, train_xy, monitor_xy, num_classes):
    """The row's student: one distillation, or a chain of them (assistants, generations), or peers."""
    spec = lambda cfg: student_spec(cfg, TEACHER_ARCH, {"num_classes": num_classes, "in_chans": 1})  # noqa: E731
    if row.peers:
        return run_peers(args, row, dirs, spec(STUDENT), train_xy, monitor_xy)
    links = plan_chain(spec(STUDENT), [spec(STUDENT.model_copy(update=a)) for a in row.assistants], row.generations)
    work = dirs / "work" / slug(row.name)

    def distil(link, student, link_teacher):
        logits = cached if link_teacher is teacher else predict_logits(link_teacher, train_xy[0])
        return distil_link(args, row, link, student, link_teacher, logits, train_xy, monitor_xy,
                           work if len(links) == 1 else work / link.name)

    results = run_chain(teacher, links, distil)
    info = dict(results[-1].info)
    if len(results) > 1:  # the cost of the row is every link's training: seconds per epoch summed
        info["seconds_per_epoch"] = sum(r.info["seconds_per_epoch"] for r in results)
        info["chain"] = [{"name": r.link.name, "params": count_params(r.model), "monitor_accuracy": r.val_accuracy}
                         for r in results]
        info["losses"] += " (chain: " + " -> ".join(f"{r.link.name} {r.val_accuracy:.3f}" for r in results) + ")"
    return results[-1].model, info


def distil_link(args, row: Row, link, student, teacher, cached, train_xy, monitor_xy, work: Path):
    init_accuracy = None
    if row.init == "teacher" and link.role == "student":
        init_from_teacher(student, teacher, calibration=train_xy[0][:512])
        init_accuracy = evaluate(student, *monitor_xy)
    losses = parse(DistillConfig, {"losses": row.losses, "unlabeled_fraction": row.unlabeled_fraction},
                   f"row {row.name!r}").losses
    objective = build_objective(losses, student=student, teacher=teacher,
                                input_shape=(1, args.input_size, args.input_size))
    split = student_split(train_xy[1].numpy(), row.train_fraction, row.unlabeled_fraction, seed=0)
    rows = torch.from_numpy(split.rows)
    student_y = train_xy[1][rows].clone()
    student_y[torch.from_numpy(split.unlabeled)] = -1  # what edgekd's student stage does
    if not objective.needs_teacher:
        teacher_fn = None  # ce / tfkd only: the teacher never runs
    elif objective.needs_teacher_internals:
        def teacher_fn(_idx, inputs):  # live: the hooks record what feature losses read
            with torch.no_grad():
                return teacher(inputs).float()
    else:
        teacher_fn = lambda idx, _inputs: cached[rows[idx]]  # noqa: E731  (batch indices point into `rows`)
    epochs = round(args.epochs / row.train_fraction) if row.same_steps else args.epochs
    cfg = train_cfg(epochs, 3e-3, args.batch_size)
    try:
        result = train(student, (train_xy[0][rows], student_y), monitor_xy, cfg, objective, work,
                       key=json.dumps(settings(args)), seed=link.seed, teacher=teacher_fn,
                       progress=epoch_printer(f"{row.name}: {link.name}", cfg.epochs))
    finally:
        objective.close()
    # the last epoch's weights (no model selection), as every row: they also teach the next link
    return evaluate(student, *monitor_xy), {
        "seconds_per_epoch": result.seconds_per_epoch, "epochs": result.epochs_run, "losses": objective.describe(),
        "init": row.init, "init_accuracy": init_accuracy, "loss_params": count_params(objective),
        "teacher": ("none" if teacher_fn is None else "live" if objective.needs_teacher_internals
                    else "cached logits"),
        "student_data": split.summary()}


def run_peers(args, row: Row, dirs, arch_kwargs, train_xy, monitor_xy):
    """Deep mutual learning: the peer with the best monitor accuracy after the last epoch is the row's student."""
    peers = []
    for k in range(row.peers):
        torch.manual_seed(k)
        peers.append(build(*arch_kwargs))
    cfg = train_cfg(args.epochs, 3e-3, args.batch_size)
    result = train_peers(peers, train_xy, monitor_xy, cfg, dirs / "work" / slug(row.name),
                         key=json.dumps(settings(args)), progress=epoch_printer(row.name, cfg.epochs))
    accuracies = [evaluate(peer, *monitor_xy) for peer in peers]
    best = max(range(len(peers)), key=accuracies.__getitem__)
    return peers[best], {"seconds_per_epoch": result.seconds_per_epoch, "epochs": result.epochs_run,
                         "losses": f"ce + kl(other peers), {row.peers} peers (monitor acc "
                                   + ", ".join(f"{a:.3f}" for a in accuracies) + f"; peer {best} kept)",
                         "init": "random", "teacher": "none (online)", "loss_params": 0,
                         "peer_monitor_accuracy": accuracies}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    suffix = "_quick" if args.quick else ""
    dirs = args.out / f"distill_fashion_mnist{suffix}"
    dirs.mkdir(parents=True, exist_ok=True)
    train_xy, monitor_xy, test_xy, num_classes = load(args)
    print(f"Fashion-MNIST: {len(train_xy[1])} train / {len(test_xy[1])} test images at {args.input_size}px, "
          f"{args.threads} threads", flush=True)
    wanted = [r for r in ROWS if not args.rows or r.name in args.rows]
    rows = {}
    teacher, cached = None, None
    for i, row in enumerate(wanted):
        path = dirs / f"{slug(row.name)}.json"
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved and saved["settings"] == settings(args) and (row.name != "teacher" or (dirs / "teacher.safetensors").is_file()):
            print(f"{row.name}: done earlier ({saved['seconds_per_epoch']:.1f} s/epoch), skipped", flush=True)
            rows[row.name] = saved
            continue
        print(f"{row.name}: training ({i + 1}/{len(wanted)})", flush=True)
        if row.name == "teacher":
            model, info = run_teacher(args, dirs, train_xy, monitor_xy, num_classes)
            teacher = model
        else:
            teacher = teacher or _saved_teacher(dirs)
            if cached is None:
                cached, cache_seconds = teacher_logits(dirs, teacher, train_xy[0])
                print(f"  teacher logits cached in {cache_seconds:.1f} s", flush=True)
            model, info = run_student(args, row, dirs, teacher, cached, train_xy, monitor_xy, num_classes)
        rows[row.name] = result_row(args, row, model, info, test_xy)
        path.write_text(json.dumps(rows[row.name], indent=2))
        left = len(wanted) - i - 1
        print(f"  {row.name}: test accuracy {rows[row.name]['test_accuracy']:.4f}, "
              f"{info['seconds_per_epoch']:.1f} s/epoch; {left} row(s) left", flush=True)
    write_reports(args, dirs, suffix, rows)


def _saved_teacher(dirs: Path):
    if not (dirs / "teacher.safetensors").is_file():
        raise SystemExit("The teacher row has not run yet: run without --rows, or with --rows teacher first.")
    return load_model(dirs / "teacher.safetensors")


def result_row(args, row: Row, model, info: dict, test_xy) -> dict:
    model.eval()
    return {"row": row.name, "settings": settings(args), "test_accuracy": evaluate(model, *test_xy),
            "params": count_params(model), "flops": count_flops(model, (1, args.input_size, args.input_size)),
            **info}


def write_reports(args, dirs: Path, suffix: str, rows: dict) -> None:
    plain = rows.get("student alone", {}).get("seconds_per_epoch")
    lines = [
        f"# Distillation on Fashion-MNIST{' (quick smoke run)' if args.quick else ''}",
        "",
        f"Teacher {TEACHER_ARCH}{f' at width {args.teacher_width}' if args.teacher_width != 1.0 else ''}; student derived at width {STUDENT.width} / depth {STUDENT.depth}. "
        f"{args.teacher_epochs} teacher / {args.epochs} student epochs, batch {args.batch_size}, "
        f"{args.input_size}x{args.input_size} inputs, {args.threads} torch threads on {platform.machine()} "
        f"({platform.processor() or 'cpu'}), torch {torch.__version__}. Test accuracy after the last epoch "
        "on the official 10k test images; s/epoch includes a 1k-image monitoring pass. The logit-only rows read "
        "cached teacher logits (computed once); fitnets/at/rkd run the teacher live every step; "
        "tfkd runs no teacher. The unlabeled row's teacher is the shared one, trained on every label. "
        "Chains (TAKD, born-again) count every link's s/epoch; online DML trains its peers together, without the "
        "teacher. The 3% rows train on 3% of the training images for epochs / 0.03 epochs (the steps of a "
        "full-data row); their s/epoch is per 3%-of-data epoch. Monitoring (and the online peer choice) uses "
        "1k validation images carved from the training data; no choice sees the test images.",
        "",
        "| row | losses | test acc | params | MFLOPs | s/epoch | vs plain epoch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        ratio = f"{r['seconds_per_epoch'] / plain:.2f}x" if plain and r["row"] != "teacher" else "-"
        init = f", init: teacher (acc before training {r['init_accuracy']:.3f})" if r.get("init") == "teacher" else ""
        used = r.get("student_data")
        if used and (used["samples"] < used["train_split"] or used["unlabeled"]):
            init += f"; {used['samples']} images, {used['unlabeled']} without labels"
        if r.get("teacher") == "none":
            init += "; no teacher"
        lines.append(f"| {r['row']} | {r['losses']}{init} | {r['test_accuracy']:.4f} | {r['params']:,} | "
                     f"{r['flops'] / 1e6:.2f} | {r['seconds_per_epoch']:.1f} | {ratio} |")
    (args.out / f"distill_fashion_mnist{suffix}.md").write_text("\n".join(lines) + "\n")
    digest = hashlib.sha256(json.dumps(settings(args), sort_keys=True).encode()).hexdigest()[:12]
    (args.out / f"distill_fashion_mnist{suffix}.json").write_text(
        json.dumps({"settings": settings(args), "settings_sha": digest, "rows": list(rows.values())}, indent=2))
    print("\n".join(lines[-len(rows) - 2:]))
    print(f"wrote {args.out / f'distill_fashion_mnist{suffix}.md'}")


if __name__ == "__main__":
    main()
