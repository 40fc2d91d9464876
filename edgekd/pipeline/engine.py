"""Sequence stages over a run directory, skipping what is already done.

A stage declares what decides its result: the config keys it reads under this
config (`reads`, dotted paths such as `data.augment` or `teachers[*].model`,
resolved by the context), other derived data (`facts`) and the run-directory
files it reads (`inputs`). Its key is the hash of all of them (input files by
content) plus the edgekd version. It also declares the files it may write
(`outputs`). After it runs, the engine records the key, the SHA-256 of every
file it wrote and its result in `.edgekd/<stage>.json`. On a re-run a stage
whose key is unchanged and whose outputs are intact is skipped; since outputs
are hashed, a change anywhere upstream flows down the chain.

A stage that now writes fewer files than its last run (a disabled quantize, a
target dropped) leaves no stale file behind: the engine moves the files its
previous record listed and this run did not write into `previous/`, so nothing
reads them as current, yet nothing computed is lost.

The engine knows nothing of what stages do (Olive's pass/engine split).

Under torchrun (`ctx.dist.enabled`) rank 0 runs this loop as usual and alone
writes records; before each `distributed` stage (training) it tells the other
ranks whether to run it and with which key, and they run it alongside. They
never evaluate keys or write anything themselves, and leave after the last
distributed stage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekd import __version__
from edgekd.artifacts import sha256_file, write_text_atomic
from edgekd.pipeline.records import RECORDS, read_record
from edgekd.ui import UI

RETIRED = "previous"  # where files a stage no longer makes are moved


def _nothing(_ctx) -> dict:
    return {}


@dataclass
class Stage:
    name: str
    what: str  # one line for the progress display
    run: Callable[[Any], dict]  # ctx -> {"outputs": [run-dir relative paths], "summary": str, ...}
    reads: Callable[[Any], list[str]]  # ctx -> the config keys the stage reads under this config
    inputs: Callable[[Any], list[str]]  # ctx -> run-dir relative files read
    outputs: Callable[[Any], list[str]]  # ctx -> run-dir relative files it may write
    facts: Callable[[Any], dict] = _nothing  # ctx -> derived JSON-able data that decides the result
    distributed: bool = False  # under torchrun every rank runs it (data-parallel training)


def input_hashes(stage: Stage, ctx) -> dict[str, str]:
    """SHA-256 of each run-directory file the stage reads (recorded too: `edgekd ship` checks that
    report.json was made from the records as they are now)."""
    return {rel: sha256_file(ctx.run_dir / rel) for rel in sorted(stage.inputs(ctx)) if (ctx.run_dir / rel).is_file()}


def stage_key(stage: Stage, ctx, inputs: dict[str, str] | None = None) -> str:
    inputs = input_hashes(stage, ctx) if inputs is None else inputs
    blob = json.dumps({"stage": stage.name, "config": ctx.config_values(stage.reads(ctx)),
                       "facts": stage.facts(ctx), "inputs": inputs, "edgekd": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _intact(run_dir: Path, record: dict) -> bool:
    return all((run_dir / rel).is_file() and sha256_file(run_dir / rel) == digest
               for rel, digest in record["outputs"].items())


def _write_record(run_dir: Path, name: str, record: dict) -> None:
    folder = run_dir / RECORDS
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{name}.json", json.dumps(record, indent=2, default=str))


def run_stages(stages: list[Stage], ctx, ui: UI, force: bool = False) -> dict[str, dict]:
    """Run or reuse each stage in order; returns every stage's record (rank 0; {} on other ranks)."""
    dist = getattr(ctx, "dist", None)
    if dist is not None and not dist.is_main:
        return _follow_rank0(stages, ctx)
    records = {}
    for stage in stages:
        inputs = input_hashes(stage, ctx)
        key = stage_key(stage, ctx, inputs)
        record = read_record(ctx.run_dir, stage.name)
        reuse = not force and record and record["key"] == key and _intact(ctx.run_dir, record)
        if stage.distributed and dist is not None:
            dist.broadcast_object((stage.name, None if reuse else key))
        if reuse:
            ui.stage_skipped(stage.name, f"config and inputs unchanged since {record['finished']}")
            records[stage.name] = record
            continue
        records[stage.name] = _run_one(stage, ctx, ui, key, inputs, previous=record)
    return records


def _run_one(stage: Stage, ctx, ui: UI, key: str, inputs: dict[str, str], previous: dict | None) -> dict:
    started = ui.stage_start(stage.name, stage.what)
    ctx.stage_key = key  # trainers key their epoch checkpoints on it (resume only the same work)
    result = stage.run(ctx)
    written = result.pop("outputs")
    undeclared = sorted(set(written) - set(stage.outputs(ctx)))
    if undeclared:  # a stage's declaration is code, not user input: a mismatch is a bug
        raise RuntimeError(f"stage {stage.name!r} wrote {undeclared}, which its `outputs` does not declare")
    outputs = {rel: sha256_file(ctx.run_dir / rel) for rel in written}
    _retire(ctx.run_dir, sorted(set((previous or {}).get("outputs", {})) - set(outputs)), ui)
    record = {"key": key, "inputs": inputs, "outputs": outputs, "result": result,
              "seconds": round(time.perf_counter() - started, 3), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_record(ctx.run_dir, stage.name, record)
    ui.stage_done(stage.name, started, result.get("summary", ""))
    return record


def _retire(run_dir: Path, stale: list[str], ui: UI) -> None:
    """Move files a stage's last run wrote, and this run did not, into previous/ (replacing older copies)."""
    for rel in stale:
        src = run_dir / rel
        if not src.is_file():
            continue
        dest = run_dir / RETIRED / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)
        ui.info(f"moved {rel} to {RETIRED}/: this config no longer makes it")


def _follow_rank0(stages: list[Stage], ctx) -> dict:
    """Ranks > 0: run the distributed stages that rank 0 runs, with its keys; nothing else."""
    for stage in (s for s in stages if s.distributed):
        name, key = ctx.dist.broadcast_object()
        if name != stage.name:  # both sides walk the same list: a mismatch is a bug, not user input
            raise RuntimeError(f"rank {ctx.dist.rank} is at stage {stage.name!r} but rank 0 sent {name!r}")
        if key is not None:
            ctx.stage_key = key
            stage.run(ctx)
    return {}
