"""`edgekd compress`: the whole loop as one plain function.

Validation happens entirely in `preflight`, before the run directory is
touched, so a bad config never damages an earlier run's results. Then the run
directory's lock (edgekd.rundir; rank 0 under torchrun): a second command on
the same directory stops there. Only then is anything written: the previous
command's scratch space and half files are removed, config.json is replaced
atomically, and the stages run.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgekd.artifacts import write_text_atomic
from edgekd.config import CompressConfig, load_config
from edgekd.errors import FileSystemError, ModelError
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
            for a in json.loads(report.read_text())["artifacts"]:
                lines.append(f"  {a['name']:<22} acc {a['accuracy']:.4f}  p50 {a['latency_ms']['p50']:.3f} ms  "
                             f"{a['size_mb']:.2f} MB  budget {'pass' if a['budget']['pass'] else 'FAIL'}")
            lines.append(f"report: {self.run_dir / 'report.md'}")
        return "\n".join(lines)


def preflight(config_path: str | Path) -> CompressConfig:
    """Everything that can be checked before any work: config, targets, model names."""
    from edgekd.config import check_single_process
    from edgekd.distill.distributed import torchrun_world

    config = load_config(config_path)
    check_single_process(config, torchrun_world())
    _check_model_names(config)
    if config.quantize.enabled:
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
    for i, assistant in enumerate(config.distill.assistants):
        _check_student(config, assistant_student(config, assistant), f"distill.assistants[{i}]")
    if config.student.init == "teacher":
        _check_prunable(config.teacher.model)


def _check_student(config: CompressConfig, student, where: str) -> None:
    """A named student (or assistant) must exist in timm; a derived one must be derivable from the teacher."""
    from edgekd.models.io import build
    from edgekd.models.student import student_spec

    if student.model is not None:
        build(student.model, {})
        return
    try:
        student_spec(student, config.teacher.model, {"num_classes": 2, "in_chans": config.data.channels})
    except ModelError as exc:
        raise ModelError(f"{where}: {exc.message}", exc.hint) from None


def _check_prunable(teacher: str) -> None:
    from edgekd.errors import ConfigError
    from edgekd.models.prune import PRUNERS
    from edgekd.models.student import family_of

    if family_of(teacher, table=PRUNERS) is None:
        raise ConfigError(f"student.init 'teacher' cannot prune teacher {teacher!r}.",
                          f"Supported families: {', '.join(PRUNERS)}. Use student.init: random.")


def compress(config_path: str | Path, out: Path | None = None, force: bool = False, ui: UI | None = None) -> CompressResult:
    config = preflight(config_path)  # before torch is imported or anything is written
    from edgekd.distill.distributed import init_from_env, shutdown

    dist, _ = init_from_env(config.device)  # torchrun: join the process group; else single process
    ui = (ui or UI()) if dist.is_main else UI(quiet=True)
    run_dir = (out or Path("runs") / config.name).resolve()
    try:
        with _held(run_dir, dist.is_main):
            records = _run(config, run_dir, dist, ui, force)
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. np.savez on a full disk names no file
            exc.filename = str(run_dir)
        shutdown(dist, failed=True)
        raise
    shutdown(dist)
    return CompressResult(run_dir, records, main=dist.is_main)


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


def _run(config: CompressConfig, run_dir: Path, dist, ui: UI, force: bool) -> dict:
    from edgekd.pipeline.context import RunContext
    from edgekd.pipeline.engine import run_stages
    from edgekd.pipeline.stages import STAGES

    if dist.is_main:
        write_text_atomic(run_dir / "config.json", config.model_dump_json(indent=2))
    dist.barrier()
    ctx = RunContext(config=config, run_dir=run_dir, ui=ui, dist=dist)
    return run_stages(STAGES, ctx, ui, force=force)
