"""One student per target (`student.search` with `per_target: true`, docs/search.md "One student per target").

When the targets' winners differ, the stages after `choose` run once per distinct winner, each over a
run directory of its own, with the config's `targets:` narrowed to the targets that winner serves:

    runs/<name>/                     the first target's student (and every target sharing its winner)
    runs/<name>/students/<arch>/     each further winner: a sub-run

A sub-run is an ordinary run directory to every stage: before its stages run, the shared stages' records
(data, search, teacher, choose) and the files they wrote are linked into it (hard links; a copy where the
filesystem has none), its `search/choice.json` is the choose stage's `search/choice-<arch>.json`, and its
`cache/` is a link to the run directory's, so the data, the teacher and the teacher-output cache are made
once and shared. No stage knows it runs in a sub-run; the engine's keys and records work there as anywhere
(a re-run reuses what is unchanged; a changed budget re-runs only the runs whose targets it touches).

The run directory's report (`report.json` `students`) lists each target's student, where its artifacts are
and its measured p50 against the budget (`student_rows`); `edgekd ship --target T` ships from T's own run
(`edgekd.pipeline.records.target_run_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edgekd.artifacts import sha256_file, write_text_atomic
from edgekd.pipeline.context import RunContext
from edgekd.pipeline.engine import Stage, run_stages
from edgekd.pipeline.records import RECORDS, read_record, student_runs
from edgekd.pipeline.search_stage import CHOICE_FILE, at_chosen_size, other_choice_file
from edgekd.ui import UI

SHARED_STAGES = ("data", "search", "teacher", "choose")  # made once in the run directory, linked into sub-runs


def run_students(stages: list[Stage], ctx: RunContext, ui: UI, force: bool = False) -> dict[str, dict]:
    """Run `stages` (those after choose) once per student: in the run directory for the first target's,
    in students/<arch>/ for each further one (the records of a sub-run's stages keyed `<run>/<stage>`)."""
    groups = student_runs(ctx.run_dir) if ctx.dist.is_main else []
    if len(groups) < 2:
        return run_stages(stages, at_chosen_size(ctx), ui, force=force)
    records = {}
    for group in groups[1:]:  # first, so that the run directory's report can show them
        ui.info(f"student {group['arch_name']} for {', '.join(group['targets'])}: in {group['run']}/")
        sub = at_chosen_size(narrowed(ctx, group["targets"], prepare_sub_run(ctx.run_dir, group)))
        if force:  # as for the run directory: its trainers start from scratch
            from edgekd.pipeline.compress import forget_intermediates

            forget_intermediates(sub.run_dir)  # its cache/ is the run directory's link: left alone
        records.update({f"{group['run']}/{name}": r for name, r in run_stages(stages, sub, ui, force=force).items()})
    own = at_chosen_size(narrowed(ctx, groups[0]["targets"], ctx.run_dir))
    return {**run_stages(stages, own, ui, force=force), **records}


def narrowed(ctx: RunContext, targets: list[str], run_dir: Path) -> RunContext:
    """`ctx` over `run_dir` with only `targets` (names) among the config's targets: whom this student serves."""
    keep = [entry for entry, profile in zip(ctx.config.targets, ctx.targets) if profile.name in targets]
    config = ctx.config.model_copy(update={"targets": keep})
    return RunContext(config=config, run_dir=run_dir, ui=ctx.ui, dist=ctx.dist, force=ctx.force,
                      ssh_options=ctx.ssh_options)


def prepare_sub_run(run_dir: Path, group: dict) -> Path:
    """students/<arch>/ with the shared stages' records and files linked in (again on every run: a file the
    run directory rewrote is a new file) and its own choice; returns its path."""
    sub = run_dir / group["run"]
    for stage in SHARED_STAGES:
        record = read_record(run_dir, stage)
        if record is None:
            continue
        for rel in record["outputs"]:
            if rel != CHOICE_FILE:
                _link(run_dir / rel, sub / rel)
        if stage == "choose":
            record = _own_choice(run_dir, sub, record, group)
        _write_if_changed(sub / RECORDS / f"{stage}.json", json.dumps(record, indent=2, default=str))
    _link_folder(run_dir / "cache", sub / "cache")
    return sub


def _own_choice(run_dir: Path, sub: Path, record: dict, group: dict) -> dict:
    """The choose record as the sub-run sees it: its choice.json is this group's, and it distils one student."""
    _link(run_dir / other_choice_file(group["arch_name"]), sub / CHOICE_FILE)
    outputs = {**record["outputs"], CHOICE_FILE: sha256_file(sub / CHOICE_FILE)}
    result = {**record["result"], "chosen": group["arch_name"],
              "students": [{"arch_name": group["arch_name"], "targets": group["targets"]}]}
    return {**record, "outputs": outputs, "result": result}


def _link(src: Path, dest: Path) -> None:
    """`dest` the same file as `src`: a hard link, or a copy across filesystems."""
    if not src.is_file() or (dest.is_file() and os.path.samefile(src, dest)):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # no hard links here (another filesystem, some network mounts)
        shutil.copy2(src, dest)


def _link_folder(src: Path, dest: Path) -> None:
    """`dest` a symbolic link to the folder `src` (relative, so the run directory can move)."""
    src.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(os.path.relpath(src, dest.parent), target_is_directory=True)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)


# ---------------------------------------------------------------- the run directory's report


def sub_reports(run_dir: Path) -> list[str]:
    """The further students' report.json files (run-directory relative): what the report stage reads."""
    return [f"{g['run']}/report.json" for g in student_runs(run_dir)[1:]]


def student_rows(run_dir: Path, report: dict) -> list[dict]:
    """report.json `students`: per target, the student the search chose for it, the run holding its
    artifacts, and its artifact for that target (the recommended one, else the fastest student file made
    for it) with the measured p50 against the target's budget. `report` is the run directory's own."""
    rows = []
    for group in student_runs(run_dir):
        own = report if group["run"] == "." else json.loads((run_dir / group["run"] / "report.json").read_text())
        for target in group["targets"]:
            rows.append({"target": target, "student": group["arch_name"], "run": group["run"],
                         **_target_artifact(own, target)})
    return rows


def _target_artifact(report: dict, target: str) -> dict:
    recommended = (report.get("recommended_by_target") or {}).get(target)
    students = [a for a in report["artifacts"] if a["model"] == "student" and target in a["budgets"]
                and (not a.get("targets") or target in a["targets"])]
    if recommended:
        row = next(a for a in students if a["name"] == recommended["name"])
    elif students:
        row = min(students, key=lambda a: a["latency_ms"]["p50"])
    else:
        return {"artifact": None}
    budget = row["budgets"][target]
    return {"artifact": row["name"], "path": row["path"], "precision": row["precision"],
            "accuracy": row["accuracy"], "p50_ms": row["latency_ms"]["p50"], "budget_ms": budget["latency_ms"],
            "pass": budget["pass"], "recommended": bool(recommended)}
