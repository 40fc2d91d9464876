"""What every stage can read: the config, the run directory, loaded data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from edgekd.config import CompressConfig, config_dict, config_value, student_data_config, student_input
from edgekd.distill.distributed import Dist
from edgekd.pipeline.records import (CALIB_FILE, SUMMARY_FILE, TEACHER_TEST_FILE, TEACHER_VAL_FILE, TEST_FILE,
                                     VAL_FILE)
from edgekd.targets import TargetProfile, load_target
from edgekd.ui import UI


@dataclass
class RunContext:
    config: CompressConfig
    run_dir: Path
    ui: UI = field(default_factory=UI)
    stage_key: str = ""  # set by the engine before each stage runs (keys epoch checkpoints)
    dist: Dist = field(default_factory=Dist)  # this process's rank under torchrun (single process: rank 0 of 1)
    force: bool = False  # --force: redo finished chain links too (the engine already ignores stage records)
    ssh_options: tuple[str, ...] = ()  # --ssh-option: extra ssh arguments for devices the search measures on
    # The user's config when `config` is the effective one of a searched input size (student.search.input_sizes:
    # `at_input_size`): the student's val/test/calib files are then data/student-<S>px/, the teacher's where the
    # data stage wrote them for the configured student.
    configured: CompressConfig | None = None

    @cached_property
    def targets(self) -> list[TargetProfile]:
        return [load_target(name) for name in self.config.targets]

    @property
    def primary_target(self) -> TargetProfile:
        """The first target: the one `report.json`'s top-level `target`, `budget` and `recommended` speak for."""
        return self.targets[0]

    def targets_for(self, runtime: str, precision: str) -> tuple[str, ...]:
        """Names of the selected targets that run `precision` on `runtime`: whom an artifact serves."""
        return tuple(t.name for t in self.targets if t.runtime == runtime and precision in t.precisions)

    def config_values(self, paths: list[str]) -> dict:
        """The values stage keys are made of. A key naming files resolves to their content:
        `targets` to the profiles (editing a profile re-runs what reads it), `quantize.calibration`
        to the manifest."""
        return {path: _RESOLVED[path](self) if path in _RESOLVED else config_value(self.config, path) for path in paths}

    @cached_property
    def data(self):
        """Data (digits, idx: arrays) or FolderData (imagefolder: the file list, read per sample)."""
        from edgekd.data import load_data

        if not self.config.data.real:  # data.kind: synthetic: classes and preprocessing, val from the synthetic stage
            from edgekd.data.teacher_only import no_real_data

            return no_real_data(self.config.data, self.config.teacher.model, self.run_dir / VAL_FILE)
        data = load_data(self.config.data, self.config.teacher.model, cache_root=self.run_dir / "cache" / "data",
                         device=self.device, skipped=self._skipped_images(), ui=self.ui)
        if not self.config.data.real_choices:  # data.use: report: real test split only, held-out synthetic val
            from edgekd.data.teacher_only import ReportOnlyData

            return ReportOnlyData(data, self.run_dir / VAL_FILE)
        return data

    @cached_property
    def student_data(self):
        """The student's view of the data: `data` itself, unless student.input_size or student.channels differ
        from the teacher's; then the same files, seed and splits read at the student's size, channels and
        normalisation, so row i of each split is the same sample in both (the data stage checks the labels)."""
        cfg = student_data_config(self.config)
        if cfg is None:
            return self.data
        from edgekd.data import load_data

        return load_data(cfg, self.config.teacher.model, cache_root=self.run_dir / "cache" / "data",
                         device=self.device, skipped=self._skipped_images(), ui=self.ui)

    @property
    def own_student_view(self) -> bool:
        """True when the student sees another input than the teacher (student.input_size / channels)."""
        return student_data_config(self.config) is not None

    def data_for(self, model: str):
        """The view `model` ("teacher" or "student") reads."""
        return self.student_data if model == "student" else self.data

    def _skipped_images(self) -> list[str]:
        """Images the data stage found unreadable and left out (data.on_bad_image: skip); later stages
        leave out the same ones. The data stage checks again (its key covers the listing)."""
        path = self.run_dir / SUMMARY_FILE
        if self.config.data.on_bad_image != "skip" or not path.is_file():
            return []
        return json.loads(path.read_text()).get("skipped_images", [])

    @cached_property
    def device(self):
        from edgekd.distill.trainer import pick_device

        if self.dist.enabled:  # torchrun: this rank's GPU (nccl) or the CPU (gloo)
            import torch

            return torch.device(self.dist.device)
        return pick_device(self.config.device)

    @property
    def student_files(self) -> str | None:
        """The folder of the student's val/test/calib files when they are not data/'s own: the searched input
        size this context runs at (`at_input_size`)."""
        return searched_view_dir(self.config.student.input_size) if self.configured is not None else None

    def _teacher_files_apart(self) -> bool:
        # the data stage wrote data/teacher/ when the configured student has its own view
        return student_data_config(self.configured or self.config) is not None

    def val_file(self, model: str = "student") -> str:
        """data/val.npz, or the teacher's own view of it when the student has its own input, or the searched
        input size's (data/student-<S>px/val.npz)."""
        if model == "teacher":
            return TEACHER_VAL_FILE if self._teacher_files_apart() else VAL_FILE
        return f"{self.student_files}/val.npz" if self.student_files else VAL_FILE

    def test_file(self, model: str = "student") -> str:
        """data/test.npz, or the teacher's own view of it when the student has its own input, or the searched
        input size's (data/student-<S>px/test.npz)."""
        if model == "teacher":
            return TEACHER_TEST_FILE if self._teacher_files_apart() else TEST_FILE
        return f"{self.student_files}/test.npz" if self.student_files else TEST_FILE

    def calib_file(self) -> str:
        """data/calib.npz, or the searched input size's (data/student-<S>px/calib.npz): the student's samples."""
        return f"{self.student_files}/calib.npz" if self.student_files else CALIB_FILE

    def val_arrays(self, model: str = "student") -> tuple[np.ndarray, np.ndarray]:
        """The validation split as written by the data stage: for choices and checks (gate, parity)."""
        return _xy(self.run_dir / self.val_file(model))

    def parity_inputs(self, samples: int, model: str = "student") -> np.ndarray:
        """A class-stratified `samples` of data/val.npz's inputs for parity checks (an image folder's file
        is in class order: its head would be one class)."""
        from edgekd.data import stratified_subsample

        x, y = self.val_arrays(model)
        return x[stratified_subsample(y, samples, self.config.data.seed)]

    @property
    def has_test(self) -> bool:
        """Whether there is a real test split to score (data.kind: synthetic: none, accuracy is unmeasured)."""
        return self.config.data.real

    def test_arrays(self, model: str = "student") -> tuple[np.ndarray, np.ndarray]:
        """The test split as written by the data stage (what devices score): for reported accuracy only."""
        return _xy(self.run_dir / self.test_file(model))

    def calib_array(self) -> np.ndarray:
        with np.load(self.run_dir / self.calib_file()) as npz:
            return npz["x"]


def searched_view_dir(size: int) -> str:
    """Where the data stage writes the student's val/test/calib files at a searched input size other than the
    configured student's (student.search.input_sizes)."""
    return f"data/student-{size}px"


def other_input_sizes(config: CompressConfig) -> list[int]:
    """student.search.input_sizes other than the configured student's input (student.input_size, else
    data.input_size): sizes whose student reads data/student-<S>px/ (none without real labelled choices)."""
    search, own = config.student.search, student_input(config)[0]
    if search is None or not config.data.real_choices:
        return []
    return [size for size in dict.fromkeys(search.input_sizes or []) if size != own]


def at_input_size(ctx: RunContext, size: int) -> RunContext:
    """`ctx` with its student at `size` px (a student.search.input_sizes entry): the effective config (the stage
    keys read its student.input_size), the student's data read at that size, its files under
    data/student-<size>px/. `ctx` itself when `size` is the configured student's input."""
    base = ctx.configured or ctx.config
    if size == student_input(base)[0]:
        return ctx if ctx.configured is None else _sharing(ctx, replace(ctx, config=base, configured=None))
    student = base.student.model_copy(update={"input_size": size})
    return _sharing(ctx, replace(ctx, config=base.model_copy(update={"student": student}), configured=base))


def _sharing(old: RunContext, new: RunContext) -> RunContext:
    """`new` reusing what `old` loaded that does not depend on the student's size (the teacher's data)."""
    for name in ("targets", "data", "device"):
        if name in old.__dict__:
            new.__dict__[name] = old.__dict__[name]
    return new


def _xy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        return npz["x"], npz["y"]


def _manifest(ctx: RunContext) -> dict:
    from edgekd.data.calib import load_manifest

    path = ctx.config.quantize.calibration
    return {"path": str(path), "manifest": config_dict(load_manifest(path))}


_RESOLVED = {
    "targets": lambda ctx: [t.model_dump(mode="json") for t in ctx.targets],
    "quantize.calibration": _manifest,
}
