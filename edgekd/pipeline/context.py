"""What every stage can read: the config, the run directory, loaded data."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from edgekd.config import CompressConfig
from edgekd.distill.distributed import Dist
from edgekd.targets import TargetProfile, load_target
from edgekd.ui import UI


@dataclass
class RunContext:
    config: CompressConfig
    run_dir: Path
    ui: UI = field(default_factory=UI)
    stage_key: str = ""  # set by the engine before each stage runs (keys epoch checkpoints)
    dist: Dist = field(default_factory=Dist)  # this process's rank under torchrun (single process: rank 0 of 1)

    @cached_property
    def targets(self) -> list[TargetProfile]:
        return [load_target(name) for name in self.config.targets]

    @property
    def primary_target(self) -> TargetProfile:
        """The first target: the one whose budgets the report judges against."""
        return self.targets[0]

    @cached_property
    def data(self):
        from edgekd.data import load_data

        return load_data(self.config.data, self.config.teacher.model)

    @cached_property
    def device(self):
        from edgekd.distill.trainer import pick_device

        if self.dist.enabled:  # torchrun: this rank's GPU (nccl) or the CPU (gloo)
            import torch

            return torch.device(self.dist.device)
        return pick_device(self.config.device)

    def val_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The validation split as written by the data stage (what devices see)."""
        with np.load(self.run_dir / "data" / "val.npz") as npz:
            return npz["x"], npz["y"]

    def calib_array(self) -> np.ndarray:
        with np.load(self.run_dir / "data" / "calib.npz") as npz:
            return npz["x"]
