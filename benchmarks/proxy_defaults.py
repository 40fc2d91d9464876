"""How long must the search's proxy distillation be to rank candidates? A small measurement on digits.

    nice -n 10 python benchmarks/proxy_defaults.py [--out /tmp/edgekd-proxy-defaults]

The digits default (examples/digits.yaml: its data, its trained ResNet-18 teacher, distill.losses and
distill.train) and two ResNet-18-derived candidates (width 0.25 depth 0.5, width 0.5 depth 1). Each candidate is
proxy-distilled at several (proxy_epochs, proxy_fraction) settings exactly as the choose stage does it
(`edgekd.pipeline.train_stages.distil_subset`: a seeded, class-stratified fraction of the student's rows,
distill.train shortened to proxy_epochs with its warm-up scaled alike). The reference ranking is the
longest setting tried (4 epochs on all rows), or with --full the whole distill.train schedule on all rows
(what the student stage gives the winner; 15 epochs: several times the cost, not run on the shared
machine). Everything is scored on the validation split; the test split is never read.

A setting is good enough when every proxy accuracy is clearly above chance (>= 0.5 on 10 classes) and
its best candidate is one whose reference accuracy is within 0.01 of the reference's best; the defaults
are the cheapest such setting. Writes benchmarks/results/proxy_defaults.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgekd.bench.sysinfo import machine_info  # noqa: E402
from edgekd.config import load_config  # noqa: E402
from edgekd.models.student import student_spec  # noqa: E402
from edgekd.pipeline import search_stage, train_stages  # noqa: E402
from edgekd.pipeline.context import RunContext  # noqa: E402
from edgekd.pipeline.engine import run_stages  # noqa: E402
from edgekd.config import StudentConfig  # noqa: E402
from edgekd.ui import UI  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# the grid's smallest and largest derived students: sized for a shared 2-core machine (each setting of each
# candidate is a real distillation; 4 x 1.0 takes minutes there)
CANDIDATES = [(0.25, 0.5), (0.5, 1.0)]
SETTINGS = [(2, 0.2), (2, 0.5), (4, 1.0)]  # (proxy_epochs, proxy_fraction); (2, 0.2): the old default
CHANCE_FLOOR = 0.5
NEAR_BEST = 0.01


def proxy(ctx: RunContext, width: float, depth: float, epochs: int, fraction: float) -> dict:
    arch, kwargs = student_spec(StudentConfig(width=width, depth=depth), *search_stage.teacher_spec(ctx))
    train = search_stage.shortened(ctx.config.distill.train, epochs)
    tag = f"w{width:g}-d{depth:g}-e{epochs}-f{fraction:g}"
    ctx.stage_key = f"proxy-defaults-{tag}"
    (ctx.run_dir / "proxy-defaults").mkdir(exist_ok=True)  # the trainer copies each run's metrics there
    t0 = time.perf_counter()
    accuracy, _ = train_stages.distil_subset(ctx, arch, kwargs, fraction=fraction, train_cfg=train,
                                             name=f"proxy-defaults/{tag}", out=f"work/proxy-defaults/{tag}.safetensors")
    return {"width": width, "depth": depth, "epochs": epochs, "fraction": fraction, "val_accuracy": accuracy,
            "seconds": round(time.perf_counter() - t0, 1)}


def verdicts(rows: list[dict], reference: tuple[int, float]) -> list[dict]:
    ref = {(r["width"], r["depth"]): r["val_accuracy"] for r in rows if (r["epochs"], r["fraction"]) == reference}
    best_ref = max(ref.values())
    out = []
    for epochs, fraction in SETTINGS:
        mine = {(r["width"], r["depth"]): r for r in rows if (r["epochs"], r["fraction"]) == (epochs, fraction)}
        pick = max(mine, key=lambda k: mine[k]["val_accuracy"])
        low = min(r["val_accuracy"] for r in mine.values())
        out.append({"epochs": epochs, "fraction": fraction, "lowest": low, "pick": pick,
                    "pick_reference": ref[pick], "best_reference": best_ref,
                    "good": low >= CHANCE_FLOOR and ref[pick] >= best_ref - NEAR_BEST,
                    "steps_per_candidate": epochs * fraction, "seconds": sum(r["seconds"] for r in mine.values())})
    return out


def markdown(d: dict) -> str:
    m, full, (ref_e, ref_f) = d["machine"], d["full_epochs"], d["reference"]
    rows = d["rows"]
    lines = ["# Proxy distillation length for student.search (digits, validation split)", "",
             f"Measured on {m['cpu']} ({m['arch']}, {m['usable_cores']} usable cores, shared with other jobs: load "
             f"average {d['load_average'][0]:.1f} at the start), torch {m['versions'].get('torch')}. Reproduce: "
             "`nice -n 10 python benchmarks/proxy_defaults.py` (method in its docstring). Seconds are wall "
             "time on this shared machine: compare them with each other only.", "",
             f"The digits default's teacher, losses and schedule (distill.train: {full} epochs at batch "
             f"{d['batch_size']}, {d['train_rows']} training rows); every accuracy on the validation split. "
             f"Reference ranking: {ref_e} epochs x {ref_f:g} of the rows"
             + (" (the whole schedule)." if ref_e == full else " (the longest setting tried, not the whole "
                "schedule: that costs several times more on this shared machine; `--full` runs it)."), "",
             "| candidate | " + " | ".join(f"{e} ep x {f:g}" for e, f in d["settings"]) + " |",
             "|---|" + "---:|" * len(d["settings"])]
    for w, dep in CANDIDATES:
        acc = {(r["epochs"], r["fraction"]): r["val_accuracy"] for r in rows if (r["width"], r["depth"]) == (w, dep)}
        lines.append(f"| resnet18-w{w:g}-d{dep:g} | " + " | ".join(f"{acc[tuple(s)]:.3f}" for s in d["settings"]) + " |")
    lines += ["", "| setting (epochs x fraction) | epochs of data per candidate | lowest proxy acc | proxy's pick | "
              "its reference acc | best reference acc | good | seconds (all candidates) |",
              "|---|---:|---:|---|---:|---:|---|---:|"]
    for v in d["verdicts"]:
        w, dep = v["pick"]
        lines.append(f"| {v['epochs']} x {v['fraction']:g} | {v['steps_per_candidate']:g} | {v['lowest']:.3f} | "
                     f"resnet18-w{w:g}-d{dep:g} | {v['pick_reference']:.3f} | {v['best_reference']:.3f} | "
                     f"{'yes' if v['good'] else 'no'} | {v['seconds']:.0f} |")
    chosen = d["chosen"]
    lines += ["", f"A setting is good when every proxy accuracy is >= {CHANCE_FLOOR} (chance: 0.1) and its pick's "
              f"reference accuracy is within {NEAR_BEST} of the best reference. "
              + (f"The cheapest good setting, **proxy_epochs {chosen[0]}, proxy_fraction {chosen[1]:g}**, is "
                 "edgekd's default." if chosen else "No setting tried is good: the defaults were not changed.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgekd-proxy-defaults"))
    parser.add_argument("--full", action="store_true", help="also the whole distill.train schedule as the reference")
    args = parser.parse_args()
    load = os.getloadavg()
    config = load_config(REPO / "examples" / "digits.yaml")
    ui = UI(quiet=True)
    ctx = RunContext(config=config, run_dir=args.out.resolve(), ui=ui)
    run_stages([train_stages.DATA, train_stages.TEACHER], ctx, ui)
    full = config.distill.train.epochs
    settings = [*SETTINGS, *([(full, 1.0)] if args.full else [])]
    rows = []
    for w, dep in CANDIDATES:
        for epochs, fraction in settings:
            rows.append(proxy(ctx, w, dep, epochs, fraction))
            print(json.dumps(rows[-1]), flush=True)
    reference = settings[-1]
    checks = verdicts(rows, reference)
    good = [v for v in checks if v["good"]]
    chosen = min(good, key=lambda v: (v["steps_per_candidate"], v["epochs"])) if good else None
    data = {"machine": machine_info(), "load_average": load, "full_epochs": full, "settings": settings,
            "reference": list(reference),
            "batch_size": config.distill.train.batch_size, "train_rows": len(train_stages._student_split(ctx).rows),
            "rows": rows, "verdicts": [{**v, "pick": list(v["pick"])} for v in checks],
            "chosen": [chosen["epochs"], chosen["fraction"]] if chosen else None}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "proxy_defaults.json").write_text(json.dumps(data, indent=1) + "\n")
    for v in data["verdicts"]:
        v["pick"] = tuple(v["pick"])
    (RESULTS / "proxy_defaults.md").write_text(markdown(data))
    print((RESULTS / "proxy_defaults.md").read_text())


if __name__ == "__main__":
    main()
