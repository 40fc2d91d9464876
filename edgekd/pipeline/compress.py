"""`edgekd compress`: the whole loop as one plain function.

Validation happens entirely in `preflight`, before the run directory is
touched, so a bad config never damages an earlier run's results. Then the run
directory's lock (edgekd.rundir; rank 0 under torchrun): a second command on
the same directory stops there. Only then is anything written: the previous
command's scratch space and half files are removed, config.json is replaced
atomically, and the stages run.

A failed quality gate that leaves the other artifacts usable (an INT8 gate)
does not stop the run: the stage records the failure, the report is written
with everything else and every attempt, and then `compress` raises GateError
(exit code 5).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgekd.artifacts import write_text_atomic
from edgekd.config import CompressConfig, StudentConfig, config_warnings, load_config
from edgekd.errors import FileSystemError, GateError, ModelError
from edgekd.ui import UI


@dataclass
class CompressResult:
    run_dir: Path
    records: dict
    main: bool = True  # False on torchrun ranks > 0, which only trained

    def summary(self) -> str:
        if not self.main:
            return ""
        report = self.run_dir / "report.json"
        lines = [f"run directory: {self.run_dir}"]
        if report.is_file():
            from edgekd.report.core import verdict_word

            for a in json.loads(report.read_text())["artifacts"]:
                acc = "unmeasured (no real labelled data)" if a["accuracy"] is None else f"{a['accuracy']:.4f}"
                lines.append(f"  {a['name']:<22} acc {acc}  p50 {a['latency_ms']['p50']:.3f} ms  "
                             f"{a['size_mb']:.2f} MB  budget {verdict_word(a['budget'])}")
            lines += _student_lines(json.loads(report.read_text()).get("students") or [])
            lines.append(f"report: {self.run_dir / 'report.md'}")
        return "\n".join(lines)


def _student_lines(rows: list[dict]) -> list[str]:
    """One student per target (per_target search): which student each target got, and where."""
    if len({r["student"] for r in rows}) < 2:
        return []
    return [f"  {r['target']}: {r['student']} in {r['run']}/" + (f", {r['artifact']} p50 {r['p50_ms']:.3f} ms "
            f"(budget {r['budget_ms']:g})" if r.get("artifact") else "") for r in rows]


def preflight(config_path: str | Path) -> CompressConfig:
    """Everything that can be checked before any work: config, targets, model names, the search's plan
    and latency tables (its ssh devices: `probe_search_devices`)."""
    from edgekd.config import check_single_process, needs_calibration
    from edgekd.distill.distributed import torchrun_world
    from edgekd.targets import load_target

    config = load_config(config_path)
    check_single_process(config, torchrun_world())
    _check_model_names(config)
    _open_search_backends(config, probe=False)
    if needs_calibration(config, [load_target(name) for name in config.targets]):
        from edgekd.data.calib import load_manifest

        load_manifest(config.quantize.calibration)
    if config.student.quantization == "qat":
        _check_modelopt()
    return config


def _check_modelopt() -> None:
    import importlib.util

    if importlib.util.find_spec("modelopt") is None:
        raise ModelError("student.quantization: qat needs NVIDIA Model Optimizer (nvidia-modelopt), which is not installed.",
                         'pip install "edgekd[qat]", or set student.quantization: none.')


def _check_model_names(config: CompressConfig) -> None:
    from edgekd.config import assistant_student
    from edgekd.models.io import build

    build(config.teacher.model, {})  # raises ModelError with "did you mean" for unknown names
    _check_student(config, config.student, "student")
    for name in (config.student.search.models if config.student.search else []):
        build(name, {})
    if config.student.search and config.student.search.widths:  # derived candidates: the teacher's family derives
        s = config.student.search
        _check_student(config, StudentConfig(width=s.widths[0], depth=s.depths[0]), "student.search")
    for i, assistant in enumerate(config.distill.assistants):
        _check_student(config, assistant_student(config, assistant), f"distill.assistants[{i}]")
    if config.student.init == "teacher":
        _check_prunable(config.teacher.model)
    if config.data.synthetic is not None:
        _check_synthetic_teacher(config)


def _check_synthetic_teacher(config: CompressConfig) -> None:
    """DeepInversion (and the BN prior of the adversarial methods) matches the teacher's BatchNorm
    statistics: a BN-free teacher (ViT, ConvNeXt) is refused now, before anything trains."""
    from edgekd.models.io import build
    from edgekd.synth.deepinversion import require_batchnorm

    synthetic = config.data.synthetic
    settings = synthetic.parsed()
    if synthetic.method.startswith("deepinversion") or getattr(settings, "bn", 0) > 0:
        what = synthetic.method if synthetic.method.startswith("deepinversion") else f"{synthetic.method} with bn > 0"
        try:
            require_batchnorm(build(config.teacher.model, {}), what)
        except ModelError as exc:
            raise ModelError(f"data.synthetic: teacher {config.teacher.model!r}: {exc.message}",
                             exc.hint + (" (or set bn: 0)" if "bn >" in what else "")) from None


def _open_search_backends(config: CompressConfig, probe: bool, ssh_options=()) -> dict:
    """student.search: where each target is measured (this machine needs its arch and onnxruntime), its
    latency table checked against the target and the searched input sizes, and with `probe` its ssh device
    asked what it runs (unreachable, no onnxruntime, no edgekd: an error naming the command and the fix).
    Returns {target: backend}."""
    search = config.student.search
    if search is None:
        return {}
    from edgekd.config import search_targets, student_input
    from edgekd.search import MeasureOptions, open_backends, plan_targets
    from edgekd.targets import load_target

    plans = plan_targets(search, search_targets(config, [load_target(n) for n in config.targets]),
                         student_input(config)[0])
    wanted = [p for p in plans if p.backend != "ssh" or probe]
    return open_backends(wanted, MeasureOptions(ssh_options=tuple(ssh_options)))


def probe_search_devices(config: CompressConfig, run_dir: Path, force: bool = False, ssh_options=()) -> None:
    """Before a run whose search has not finished (or under --force): reach every ssh device now, before
    anything is written or trained. A run whose search stage is recorded needs no device when it is reused;
    a changed search re-runs its stage, which probes again, still before the teacher trains."""
    from edgekd.pipeline.records import read_record

    if config.student.search is not None and (force or read_record(run_dir, "search") is None):
        _open_search_backends(config, probe=True, ssh_options=ssh_options)


def search_preview(config: CompressConfig, probe: bool = False, ssh_options=()) -> str | None:
    """`edgekd validate`: the candidates (params, FLOPs, built on the CPU) and how many measurements where."""
    search = config.student.search
    if search is None:
        return None
    from edgekd.config import search_targets, student_input
    from edgekd.search import MeasureOptions, format_preview, preview
    from edgekd.targets import load_target

    classes = _class_count(config.data)
    size, channels = student_input(config)  # candidates take the student's input (its own view, if any)
    p = preview(search, search_targets(config, [load_target(n) for n in config.targets]),
                teacher_arch=config.teacher.model, teacher_kwargs={"num_classes": classes or 10, "in_chans": channels},
                default_input_size=size, probe=probe,
                options=MeasureOptions(ssh_options=tuple(ssh_options)))
    head = "" if classes else " (params with a 10-class head: validate does not read the labels)"
    return format_preview(p) + head + _sizes_line(config)


def _sizes_line(config: CompressConfig) -> str:
    """With several searched input sizes: which view of the data each size's candidates train and score on."""
    from edgekd.config import student_input
    from edgekd.pipeline.context import other_input_sizes, searched_view_dir

    others = other_input_sizes(config)
    if not others:
        return ""
    own = student_input(config)[0]
    return (f"\n  input sizes: {own} px on the student's data/ files; "
            + ", ".join(f"{s} px on its own view of each sample ({searched_view_dir(s)}/)" for s in others)
            + "; the chosen size is the student's for training, export, INT8, bench and ship")


def no_real_choices_plan(config: CompressConfig) -> str:
    """`edgekd validate`, data.kind: synthetic / data.use: report: what the run will use instead of real labels."""
    d, s = config.data, config.data.synthetic
    what = (f"no real labelled data: {len(d.class_names)} classes ({', '.join(d.class_names[:5])}"
            f"{', ...' if len(d.class_names) > 5 else ''}), input {d.channels}x{d.input_size}x{d.input_size}"
            if not d.real else "data.use: report: only the real test split is read, to score the report")
    return (f"{what}; {s.count - s.holdout} {s.method} images will train the student and {s.holdout} are held out "
            "for every choice (agreement with the teacher; the INT8 gate: agreement with the FP32 student); the "
            "teacher is used as loaded (not fine-tuned)"
            + ("; accuracy will be reported as unmeasured." if not d.real else "."))


def _class_count(data) -> int | None:
    """The class count without reading the data: digits 10; an image folder's class folders; idx: None."""
    if data.kind == "digits":
        return 10
    if data.kind == "synthetic":
        return len(data.class_names)
    if data.kind == "imagefolder" and data.path.is_dir():
        root = data.path / "train" if (data.path / "train").is_dir() else data.path
        return sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) or None
    return None


def _check_student(config: CompressConfig, student, where: str) -> None:
    """A named student (or assistant) must exist in timm; a derived one must be derivable from the teacher."""
    from edgekd.models.io import build
    from edgekd.models.student import student_spec

    if student.model is not None:
        build(student.model, {})
        return
    from edgekd.config import student_input

    try:  # the student's own input channels (student.channels), else the teacher's
        student_spec(student, config.teacher.model, {"num_classes": 2, "in_chans": student_input(config)[1]})
    except ModelError as exc:
        raise ModelError(f"{where}: {exc.message}", exc.hint) from None


def _check_prunable(teacher: str) -> None:
    from edgekd.errors import ConfigError
    from edgekd.models.prune import PRUNERS
    from edgekd.models.student import family_of

    if family_of(teacher, table=PRUNERS) is None:
        raise ConfigError(f"student.init 'teacher' cannot prune teacher {teacher!r}.",
                          f"Supported families: {', '.join(PRUNERS)}. Use student.init: random.")


def compress(config_path: str | Path, out: Path | None = None, force: bool = False, ui: UI | None = None,
             ssh_options: tuple[str, ...] = ()) -> CompressResult:
    """ssh_options: extra ssh arguments for the devices `student.search` measures on (-i KEY, -p PORT, ...)."""
    config = preflight(config_path)  # before torch is imported or anything is written
    run_dir = (out or Path("runs") / config.name).resolve()
    from edgekd.distill.distributed import init_from_env, shutdown

    dist, _ = init_from_env(config.device)  # torchrun: join the process group; else single process
    if dist.is_main:
        probe_search_devices(config, run_dir, force, ssh_options)
    ui = (ui or UI()) if dist.is_main else UI(quiet=True)
    try:
        with _held(run_dir, dist.is_main):
            records = _run(config, run_dir, dist, ui, force, tuple(ssh_options))
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. np.savez on a full disk names no file
            exc.filename = str(run_dir)
        shutdown(dist, failed=True)
        raise
    shutdown(dist)
    result = CompressResult(run_dir, records, main=dist.is_main)
    _raise_failed_gates(result)
    return result


@contextmanager
def _held(run_dir: Path, main: bool):
    """Rank 0 holds the run directory for the whole run; on failure its scratch and half files go."""
    from edgekd import rundir

    if not main:  # torchrun ranks > 0 write nothing; rank 0's lock covers them
        yield
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise FileSystemError(f"--out {run_dir} is a file, not a folder.", "Choose a folder (it is created if missing).")
    with rundir.hold(run_dir, "edgekd compress"):
        rundir.clean(run_dir)  # a killed earlier run's leftovers
        try:
            yield
        except BaseException:
            rundir.clean(run_dir)
            raise


def _run(config: CompressConfig, run_dir: Path, dist, ui: UI, force: bool, ssh_options: tuple[str, ...] = ()) -> dict:
    from edgekd.pipeline.context import RunContext
    from edgekd.pipeline.engine import run_stages
    from edgekd.pipeline.stages import STAGES
    from edgekd.pipeline.students import run_students

    if dist.is_main:
        for warning in config_warnings(config):
            ui.warn(warning)
        write_text_atomic(run_dir / "config.json", config.model_dump_json(indent=2))
        if force:
            forget_intermediates(run_dir)
    dist.barrier()
    ctx = RunContext(config=config, run_dir=run_dir, ui=ui, dist=dist, force=force, ssh_options=ssh_options)
    split = [s.name for s in STAGES].index("choose") + 1  # after it: one run per student (per_target search)
    records = run_stages(STAGES[:split], ctx, ui, force=force)
    return {**records, **run_students(STAGES[split:], ctx, ui, force=force)}


def forget_intermediates(run_dir: Path) -> None:
    """--force: what lets a stage resume or reuse work goes, so every stage starts from scratch.
    Finished outputs stay where they are until their stage rewrites them."""
    import shutil

    shutil.rmtree(run_dir / "cache", ignore_errors=True)
    for checkpoint in (run_dir / "work").glob("**/last.pt"):
        checkpoint.unlink()


def _raise_failed_gates(result: CompressResult) -> None:
    """Exit 5 after the report is written, when a stage recorded a failed gate (reused records too:
    the same config fails the same way)."""
    failed = [f for record in result.records.values() for f in record["result"].get("failures", [])]
    if not failed:
        return
    raise GateError("; ".join(f"{f['check']} failed: {f['message']}" for f in failed),
                    f"The report ({result.run_dir / 'report.md'}) shows every other artifact and every attempt. "
                    + " ".join(f["hint"] for f in failed if f.get("hint")))
