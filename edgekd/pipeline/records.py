"""What a run directory holds, read from its stage records (torch-free).

Every stage leaves `.edgekd/<stage>.json`: its cache key, the SHA-256 of every file it
wrote (`outputs`) and its result. A result lists the artifacts the stage made
(`artifacts`: name, model, runtime, precision, path, the targets it serves). A run's
current artifacts are those lists read in pipeline order, never a listing of the folder,
which may still hold files an earlier config made.

    current_artifacts(run_dir)                     -> every artifact, pipeline order
    current_artifacts(run_dir, target="rpi5")      -> those meant to run on rpi5
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekd.artifacts import STUDENT_CHECKPOINT, TEACHER_CHECKPOINT
from edgekd.rundir import RECORDS

# The stages of `edgekd compress`, in order (edgekd.pipeline.stages.STAGES; a test keeps the two equal).
STAGE_ORDER = ("data", "search", "teacher", "choose", "synthetic", "student", "qat", "export", "quantize", "tensorrt", "bench", "report")

# Run-directory files more than one module names.
CHECKPOINTS = {"teacher": TEACHER_CHECKPOINT, "student": STUDENT_CHECKPOINT}  # model role -> its checkpoint
VAL_FILE = "data/val.npz"  # the validation split: every choice (best epoch, early stopping, peers, INT8 gate)
TEST_FILE = "data/test.npz"  # the test split (stratified, capped): every accuracy reported, here and on devices
TRANSFER_FILE = "synthetic/transfer.json"  # the synthetic stage's summary of its transfer set (data.synthetic)
CALIB_FILE = "data/calib.npz"  # calibration samples, drawn from the split the manifest names
SUMMARY_FILE = "data/summary.json"
# A student with its own input (student.input_size / channels): the files above are the student's view (what
# export, INT8, bench and ship read); the teacher's artifacts are checked and scored on its own view of the
# same samples, row for row.
TEACHER_VAL_FILE = "data/teacher/val.npz"
TEACHER_TEST_FILE = "data/teacher/test.npz"
STUDENTS_DIR = "students"  # per_target search: students/<arch>/ holds each further winner's sub-run


@dataclass(frozen=True)
class Artifact:
    """One file a stage made for measuring or shipping."""

    name: str  # unique in a run: teacher-pytorch, student-fp32, student-int8, ...
    model: str  # teacher | student
    runtime: str  # pytorch | onnxruntime | tensorrt (a TensorRT artifact is the ONNX an engine is built from)
    precision: str  # fp32 | fp16 | int8
    path: str  # run-directory relative
    targets: tuple[str, ...] = field(default=())  # the `targets:` it is meant to run on (none: a reference)

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> "Artifact":
        return cls(**{**data, "targets": tuple(data.get("targets") or ())})


def read_record(run_dir: Path, name: str) -> dict | None:
    path = Path(run_dir) / RECORDS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def stage_artifacts(run_dir: Path, stage: str, present: bool = True) -> list[Artifact]:
    """The artifacts `stage` recorded (with `present`, only those whose files are still there)."""
    record = read_record(run_dir, stage) or {}
    listed = [Artifact.from_dict(a) for a in (record.get("result") or {}).get("artifacts", [])]
    return [a for a in listed if not present or (Path(run_dir) / a.path).is_file()]


def current_artifacts(run_dir: str | Path, target: str | None = None,
                      stages: tuple[str, ...] = STAGE_ORDER, present: bool = True) -> list[Artifact]:
    """Every artifact the stage records list, in pipeline order; with `target`, those that serve it.
    `present=False` keeps those whose file has gone (ship: a recorded file that is missing is an error)."""
    found = [a for stage in stages for a in stage_artifacts(Path(run_dir), stage, present)]
    return [a for a in found if target is None or target in a.targets]


def student_runs(run_dir: str | Path) -> list[dict]:
    """The students a run distils, from the choose stage's record: [{"arch_name", "targets", "run"}], `run`
    relative to `run_dir` ("." for the run directory's own student, students/<arch> for the others: a
    per_target search whose targets' winners differ). Empty without a search."""
    groups = ((read_record(Path(run_dir), "choose") or {}).get("result") or {}).get("students") or []
    return [{**g, "run": "." if i == 0 else f"{STUDENTS_DIR}/{g['arch_name']}"} for i, g in enumerate(groups)]


def target_run_dir(run_dir: str | Path, target: str) -> Path:
    """The run directory holding `target`'s own artifacts: `run_dir`, or the sub-run of the student
    the search chose for it."""
    run = next((g["run"] for g in student_runs(run_dir) if target in g["targets"]), ".")
    return Path(run_dir) / run if run != "." else Path(run_dir)
