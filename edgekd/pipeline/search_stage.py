"""The student search in `edgekd compress` (`student.search`, docs/search.md): two stages around the teacher.

    data -> search -> teacher -> choose -> student -> export -> ...

search (before anything trains): every candidate is exported with random weights (INT8 files calibrated on the
run's calibration samples), measured in each precision its target offers where the target runs it (this
machine, a device over ssh, a latency table made on an offline device) and judged against the budgets. A
device that cannot be reached, a table that does not fit, or a budget no candidate meets stops the run here,
before the teacher trains. Candidate files and measurements are cached under cache/search/ (edgekd.search):
a re-run measures nothing twice and an interrupted search continues where it stopped.

choose (after the teacher): the candidates that fit are ranked by a proxy distillation, `proxy_epochs` on a
seeded, stratified `proxy_fraction` of the student's training rows, scored on the validation split (never
the test split); by FLOPs when proxy_epochs is 0; ties go to the lower latency. The winner goes to
search/choice.json, which the student stage reads (`chosen_student`).

Continuing the proxy: each proxy run is a complete short schedule (distill.train with epochs =
proxy_epochs and its warm-up scaled by the same share, so its accuracy is a settled score, not a snapshot
at peak learning rate) saved as search/proxy-<arch>.safetensors. The chosen student starts from that
checkpoint (`proxy_start`) and runs distill.train's whole schedule on all its rows: a warm restart (as in
SGDR), so the proxy's epochs are added to the student's training, never repeated. The proxy trained on
another number of rows per epoch, so its optimizer and scheduler state cannot be carried on step for step.

Several targets: `per_target: false` distils the best architecture that fits them all (each in its fastest
fitting precision). `per_target: true` chooses per target; targets whose winner is the same architecture share
one student. The first target's winner goes to search/choice.json (the run directory's own student); every other
winner to search/choice-<arch>.json, which `edgekd.pipeline.students` gives a sub-run of its own
(students/<arch>/) that shares the data, teacher and teacher-output cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edgekd.artifacts import sha256_file, write_json_atomic
from edgekd.config import StudentConfig, TrainConfig, search_targets, student_input
from edgekd.errors import ConfigError
from edgekd.pipeline.context import RunContext, at_input_size
from edgekd.pipeline.engine import Stage
from edgekd.pipeline.records import CALIB_FILE, SUMMARY_FILE, VAL_FILE
from edgekd.search import (Candidate, MeasureOptions, SearchMeasurement, check_fits, measure_search, rank_search,
                           search_sections)
from edgekd.search.candidates import architectures_of, candidate_spec, expand_grid

SEARCH_DIR = "search"
MEASURED_FILE = f"{SEARCH_DIR}/measured.json"  # every candidate measured and judged (search stage)
CHOICE_FILE = f"{SEARCH_DIR}/choice.json"  # the chosen candidate and its proxy run: what the student stage reads
SECTIONS_FILE = f"{SEARCH_DIR}/report.json"  # the report's search sections (a changed margin: the same student)
CANDIDATES_DIR = "cache/search/candidates"  # untrained ONNX files, reused while their records match
MEASUREMENTS_DIR = "cache/search/measurements"  # one file per measurement
CHOICE_FORMAT = "edgekd.search-choice/1"


def enabled(ctx: RunContext) -> bool:
    return ctx.config.student.search is not None


def teacher_spec(ctx: RunContext) -> tuple[str, dict]:
    """The teacher's (arch, kwargs) as the teacher stage will build it (edgekd.models.teacher.build_teacher),
    known from the config and the data before it is trained: derived candidates are shaped from it, with the
    student's input channels (student.channels: its own view, data/summary.json `student_view`)."""
    summary = json.loads((ctx.run_dir / SUMMARY_FILE).read_text())
    student_pre = (summary.get("student_view") or summary)["preprocess"]
    return ctx.config.teacher.model, {"num_classes": len(summary["classes"]), "in_chans": student_pre["channels"]}


# ---------------------------------------------------------------- search: measure and judge


def _search_reads(ctx: RunContext) -> list[str]:
    if not enabled(ctx):
        return ["student.search"]
    keys = ("widths", "depths", "models", "input_sizes", "precisions", "margin", "latency_table", "hosts")
    # teacher.model shapes derived candidates; student.input_size / channels: their input; quantize.enabled /
    # student.quantization: the precisions this run makes; export.*: how candidates are exported; targets: where
    # and against which budgets
    return [*(f"student.search.{k}" for k in keys), "teacher.model", "student.input_size", "student.channels",
            "quantize.enabled", "student.quantization", "export.opset", "export.exporter", "export.dynamic_batch",
            "targets"]


def _search_inputs(ctx: RunContext) -> list[str]:
    if not enabled(ctx):
        return []
    search, tables = ctx.config.student.search, []
    if search.latency_table is not None:  # absolute paths: their content keys the stage
        table = search.latency_table
        tables = [str(p) for p in (table.values() if isinstance(table, dict) else [table])]
    return [SUMMARY_FILE, CALIB_FILE, *tables]


def _calibration(ctx: RunContext) -> np.ndarray:
    """Samples INT8 candidates are calibrated on (their latency, not accuracy, is what counts here)."""
    path = ctx.run_dir / (CALIB_FILE if (ctx.run_dir / CALIB_FILE).is_file() else VAL_FILE)
    with np.load(path) as npz:
        return npz["x"][:64]


def measure_options(ctx: RunContext) -> MeasureOptions:
    return MeasureOptions(ssh_options=tuple(ctx.ssh_options), log=ctx.ui.info)


def run_search_stage(ctx: RunContext) -> dict:
    if not enabled(ctx):
        return {"outputs": [], "summary": "off (no student.search)"}
    from edgekd.pipeline.deploy_stages import export_opset

    c, search = ctx.config, ctx.config.student.search
    teacher_arch, teacher_kwargs = teacher_spec(ctx)
    measured = measure_search(search, search_targets(c, ctx.targets), teacher_arch=teacher_arch,
                              teacher_kwargs=teacher_kwargs, default_input_size=student_input(c)[0],
                              folder=ctx.run_dir / CANDIDATES_DIR, cache_dir=ctx.run_dir / MEASUREMENTS_DIR,
                              calib_x=_calibration(ctx), opset=export_opset(ctx), exporter=c.export.exporter,
                              dynamic_batch=c.export.dynamic_batch, options=measure_options(ctx))
    (ctx.run_dir / SEARCH_DIR).mkdir(exist_ok=True)
    write_json_atomic(ctx.run_dir / MEASURED_FILE, measured.to_json())  # kept even when nothing fits
    check_fits(measured.judged, search.per_target)  # a budget no candidate meets: stop before any training
    cost, fits = measured.cost, sum(j.fits for j in measured.judged)
    where = "; ".join(f"{p.target.name} on {p.where}" for p in measured.plans)
    return {"outputs": [MEASURED_FILE], "cost": cost,
            "summary": f"{cost['architectures']} candidates, {cost['measurements']} measurements ({cost['measured']} "
                       f"made, {cost['reused']} reused) on {where}; {fits} fit"}


SEARCH = Stage("search", "measure candidate students where they will run", run_search_stage, _search_reads,
               _search_inputs, lambda ctx: [MEASURED_FILE] if enabled(ctx) else [])


# ---------------------------------------------------------------- the offline path: a bundle for `edgekd profile`


def offline_target(ctx: RunContext, name: str | None):
    """The target (as the search sees it: only the precisions this run makes) a candidate bundle is for."""
    if ctx.config.student.search is None:
        raise ConfigError("The config has no student.search: there are no candidates to bundle.",
                          "Add a student.search section (docs/search.md).")
    targets = search_targets(ctx.config, ctx.targets)
    if name is None and len(targets) == 1:
        return targets[0]
    names = [t.name for t in targets]
    if name is None or name not in names:
        said = "several targets" if name is None else f"no target {name!r}"
        raise ConfigError(f"The config has {said} ({', '.join(names)}): which one is the bundle for?",
                          f"Pass --target, one of {', '.join(names)}.")
    return targets[names.index(name)]


def write_search_bundle(ctx: RunContext, target_name: str | None, out: Path) -> tuple[Path, int]:
    """`edgekd search-bundle`: every candidate of the search, in each precision `target` measures, as one
    hash-checked candidate bundle at `out` for `edgekd profile` on a device this machine cannot reach.

    The files are those the run's search stage makes (the same folder, architecture hashes and calibration:
    the data stage must have run), so the table the device writes matches the run's candidates entry by
    entry. Returns (bundle, how many candidates)."""
    from edgekd.pipeline.deploy_stages import export_opset
    from edgekd.quantize.schemes import scheme_for_target
    from edgekd.search import precisions_for, prepare_candidates
    from edgekd.search.bundle import write_candidate_bundle

    c, search = ctx.config, ctx.config.student.search
    target = offline_target(ctx, target_name)
    teacher_arch, teacher_kwargs = teacher_spec(ctx)
    precisions = precisions_for(search, target)
    candidates = expand_grid(search, teacher_arch, precisions, student_input(c)[0])
    prepared = prepare_candidates(candidates, teacher_arch, teacher_kwargs, ctx.run_dir / CANDIDATES_DIR,
                                  _calibration(ctx), opset=export_opset(ctx), exporter=c.export.exporter,
                                  dynamic_batch=c.export.dynamic_batch, log=ctx.ui.info,
                                  schemes=[scheme_for_target(target)] if "int8" in precisions else [])
    return write_candidate_bundle(prepared, target, out), len(prepared)

# ---------------------------------------------------------------- choose: rank by proxy distillation

# What a proxy run's result depends on besides its architecture (the student stage's training reads)
PROXY_READS = ("seed", "device", "data.augment", "data.seed", "data.train_fraction", "student.init",
               "student.input_size", "student.channels", "distill.losses", "distill.train", "distill.teacher_cache",
               "distill.replay_views", "distill.replay_topk",
               "distill.unlabeled_fraction")


def _choose_reads(ctx: RunContext) -> list[str]:
    if not enabled(ctx):
        return ["student.search"]
    reads = ["student.search.proxy_epochs", "student.search.per_target"]
    if ctx.config.student.search.proxy_epochs:
        reads += ["student.search.proxy_fraction", *PROXY_READS]
        reads += ["teachers[*].weight"] if ctx.config.teachers else []
    return reads


def _choose_inputs(ctx: RunContext) -> list[str]:
    from edgekd.pipeline.train_stages import teacher_files

    return [MEASURED_FILE, SUMMARY_FILE, *teacher_files(ctx.config)] if enabled(ctx) else []


def proxy_file(arch_name: str, suffix: str = ".safetensors") -> str:
    return f"{SEARCH_DIR}/proxy-{arch_name}{suffix}"


def _proxy_files(arch_name: str) -> list[str]:
    # the checkpoint, what it was made from (proxy key), and its per-epoch metrics (copied by the trainer's caller)
    return [proxy_file(arch_name), proxy_file(arch_name, ".json"), proxy_file(arch_name, ".metrics.jsonl")]


def _choose_outputs(ctx: RunContext) -> list[str]:
    if not enabled(ctx):
        return []
    c = ctx.config
    grid = expand_grid(c.student.search, c.teacher.model, ["fp32"], student_input(c)[0])
    arches = [cand.arch_name for cand in architectures_of(grid)]
    return ([CHOICE_FILE, SECTIONS_FILE] + [other_choice_file(a) for a in arches]
            + [f for a in arches for f in _proxy_files(a)])


def proxy_schedule(ctx: RunContext) -> TrainConfig:
    """distill.train compressed to proxy_epochs: the same warm-up share, so the proxy is a whole short run."""
    return shortened(ctx.config.distill.train, ctx.config.student.search.proxy_epochs)


def shortened(train: TrainConfig, epochs: int) -> TrainConfig:
    """`train` as a whole schedule of `epochs` epochs, its warm-up scaled by the same share."""
    warmup = train.warmup_epochs * epochs / train.epochs if train.epochs else 0.0
    return train.model_copy(update={"epochs": epochs, "warmup_epochs": warmup})


def _proxy_key(ctx: RunContext, arch: str, kwargs: dict) -> str:
    """Everything a proxy run's weights follow from; a proxy with the same key is reused across searches (a
    changed budget, margin or per_target re-ranks without retraining)."""
    from edgekd.pipeline.engine import input_hashes

    s = ctx.config.student.search
    blob = {"arch": arch, "kwargs": kwargs, "epochs": s.proxy_epochs, "fraction": s.proxy_fraction,
            "config": ctx.config_values([*PROXY_READS, *(["teachers[*].weight"] if ctx.config.teachers else [])]),
            "inputs": input_hashes(CHOOSE, ctx)}
    blob["inputs"].pop(MEASURED_FILE, None)  # the latencies decide which candidates run, not how they train
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _proxy_score(ctx: RunContext, candidate: Candidate, written: list[str]) -> float:
    """Validation accuracy of `candidate` after its proxy distillation (run now, or reused), trained and scored
    on the student's data at the candidate's input size (`at_input_size`: its key reads that size)."""
    from edgekd.pipeline import train_stages

    ctx = at_input_size(ctx, candidate.input_size)
    s, name = ctx.config.student.search, candidate.arch_name
    arch, kwargs = candidate_spec(candidate, *teacher_spec(ctx))
    key, out, record = _proxy_key(ctx, arch, kwargs), proxy_file(name), ctx.run_dir / proxy_file(name, ".json")
    done = _finished_proxy(ctx, record, key)
    if done is None:
        ctx.ui.info(f"proxy distillation of {name}: {s.proxy_epochs} epochs on {s.proxy_fraction:g} of the rows")
        accuracy, _ = train_stages.distil_subset(ctx, arch, kwargs, fraction=s.proxy_fraction,
                                                 train_cfg=proxy_schedule(ctx), name=proxy_file(name, ""), out=out)
        done = {"key": key, "val_accuracy": accuracy, "sha256": sha256_file(ctx.run_dir / out),
                "epochs": s.proxy_epochs, "fraction": s.proxy_fraction}
        write_json_atomic(record, done)
    else:
        ctx.ui.info(f"proxy distillation of {name}: reused {out} (val accuracy {done['val_accuracy']:.4f})")
    written += [f for f in _proxy_files(name) if (ctx.run_dir / f).is_file()]
    return float(done["val_accuracy"])


def _finished_proxy(ctx: RunContext, record: Path, key: str) -> dict | None:
    """A proxy run made from the same key whose checkpoint is unchanged; never under --force."""
    if ctx.force or not record.is_file():
        return None
    done = json.loads(record.read_text())
    checkpoint = ctx.run_dir / proxy_file(record.name.removeprefix("proxy-").removesuffix(".json"))
    if done.get("key") != key or not checkpoint.is_file() or sha256_file(checkpoint) != done.get("sha256"):
        return None
    return done


def other_choice_file(arch_name: str) -> str:
    """The choice of a winner other than the first target's (per_target: true): its sub-run's choice.json."""
    return f"{SEARCH_DIR}/choice-{arch_name}.json"


def run_choose(ctx: RunContext) -> dict:
    if not enabled(ctx):
        return {"outputs": [], "summary": "off (no student.search)"}
    search = ctx.config.student.search
    measured = SearchMeasurement.from_json(json.loads((ctx.run_dir / MEASURED_FILE).read_text()))
    measured.search = measured.search.model_copy(update={"per_target": search.per_target})
    written: list[str] = []
    score = (lambda candidate: _proxy_score(ctx, candidate, written)) if search.proxy_epochs else None
    result = rank_search(measured, score)
    write_json_atomic(ctx.run_dir / SECTIONS_FILE, search_sections(result))
    students = winners(result.chosen)
    for i, group in enumerate(students):
        group["choice"] = CHOICE_FILE if i == 0 else other_choice_file(group["arch_name"])
        _write_choice(ctx, result.chosen[group["targets"][0]].candidate, result.scores, group["choice"])
    ranked = f"{result.cost['scored']} proxy runs" if search.proxy_epochs else "FLOPs"
    return {"outputs": [SECTIONS_FILE, *(g["choice"] for g in students), *dict.fromkeys(written)],
            "chosen": students[0]["arch_name"], "students": students,
            "by_target": {t: j.candidate.name for t, j in result.chosen.items()}, "cost": result.cost,
            "summary": ", ".join(f"{t}: {j.candidate.arch_name} {j.candidate.precision} p50 {j.row.p50_ms:.3f} ms "
                                 f"<= {j.limit_ms:.3g}" for t, j in result.chosen.items())
                       + f"; {len(students)} student{'s' if len(students) > 1 else ''}, ranked by {ranked}"}


def winners(chosen: dict) -> list[dict]:
    """One entry per distinct winning architecture, in the order of the first target each serves:
    [{"arch_name", "targets": [names]}]. Targets that share a winner share one student."""
    groups: dict[str, list[str]] = {}
    for target, judged in chosen.items():
        groups.setdefault(judged.candidate.arch_name, []).append(target)
    return [{"arch_name": arch, "targets": targets} for arch, targets in groups.items()]


def _write_choice(ctx: RunContext, chosen: Candidate, scores: dict, rel: str) -> None:
    search = ctx.config.student.search
    proxy = proxy_file(chosen.arch_name) if search.proxy_epochs else None
    # the architecture only: a margin that moves the chosen precision (fp32 -> int8) leaves the student alone
    student = {k: v for k, v in chosen.as_dict().items() if k not in ("name", "precision")}
    write_json_atomic(ctx.run_dir / rel, {
        "format": CHOICE_FORMAT, "arch_name": chosen.arch_name, "student": student,
        "proxy": proxy and {"checkpoint": proxy, "sha256": sha256_file(ctx.run_dir / proxy),
                            "val_accuracy": scores[chosen.arch_name]}})


CHOOSE = Stage("choose", "rank the candidates that fit by proxy distillation", run_choose, _choose_reads,
               _choose_inputs, _choose_outputs)

# ---------------------------------------------------------------- what the student stage and the report read


def _choice(ctx: RunContext) -> dict:
    path = ctx.run_dir / CHOICE_FILE
    if not path.is_file():  # the choose stage always runs before the student stage: a missing file is a bug
        raise RuntimeError(f"{CHOICE_FILE} is missing: the choose stage has not run")
    return json.loads(path.read_text())


def choice_files(ctx: RunContext) -> list[str]:
    """What the student stage reads from the search: the choice, and the proxy run it continues."""
    if not enabled(ctx):
        return []
    path = ctx.run_dir / CHOICE_FILE
    proxy = (json.loads(path.read_text()).get("proxy") or {}).get("checkpoint") if path.is_file() else None
    return [CHOICE_FILE] + ([proxy] if proxy else [])


def chosen_student(ctx: RunContext) -> StudentConfig:
    """The student to distil: the config's, or the search's choice as a derived or named student."""
    student = ctx.config.student
    if not enabled(ctx):
        return student
    c = _choice(ctx)["student"]
    shape = {"width": c["width"], "depth": c["depth"]} if c["width"] is not None else {"model": c["model"]}
    return StudentConfig(**shape, init=student.init, quantization=student.quantization,
                         input_size=student.input_size, channels=student.channels)


def at_chosen_size(ctx: RunContext) -> RunContext:
    """`ctx` for the stages after choose: with the chosen candidate's input size when it is another
    student.search.input_sizes entry than the configured student's (the effective config, data/student-<S>px/
    files; edgekd.pipeline.context.at_input_size). A run without a search: `ctx`."""
    if not enabled(ctx):
        return ctx
    return at_input_size(ctx, _choice(ctx)["student"]["input_size"])


def proxy_start(ctx: RunContext) -> dict | None:
    """The chosen candidate's proxy checkpoint as the student's start: {"state_dict", "init", ...}; None
    without a search or with FLOPs ranking."""
    if not enabled(ctx):
        return None
    proxy = _choice(ctx).get("proxy")
    if not proxy:
        return None
    from edgekd.models.io import read_checkpoint

    path = ctx.run_dir / proxy["checkpoint"]
    if sha256_file(path) != proxy["sha256"]:
        raise ConfigError(f"{proxy['checkpoint']} changed after the search chose it.",
                          "Re-run `edgekd compress` (the choose stage redoes what it needs) or pass --force.")
    ckpt = read_checkpoint(path)
    s = ctx.config.student.search
    return {"state_dict": ckpt["state_dict"], "init": f"the search's proxy run ({s.proxy_epochs} epoch{'s' if s.proxy_epochs != 1 else ''} on "
            f"{s.proxy_fraction:g} of the rows, {ckpt['metrics'].get('init', 'random')}), continued",
            "init_val_accuracy": proxy["val_accuracy"], "proxy_checkpoint": proxy["checkpoint"]}


def report_sections(run_dir: Path) -> list[dict]:
    """The search's report sections, one per target (none without a search)."""
    path = Path(run_dir) / SECTIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else []
