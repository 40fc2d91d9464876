"""Calibration-set manifests (the YAML files under calib/).

A manifest says which split calibration images come from, how many, and the
seed that picks them, so an INT8 model's calibration can be reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgekd.schema import Strict, parse, read_yaml


class CalibManifest(Strict):
    description: str = ""
    split: Literal["train", "val"] = Field("train", description="train keeps the val accuracy unbiased")
    samples: int = Field(256, ge=1)
    seed: int = 0
    per_class: bool = Field(True, description="draw the same number from every class")


def load_manifest(path: Path) -> CalibManifest:
    return parse(CalibManifest, read_yaml(path, what="calibration manifest"), source=f"calibration manifest {path}")


def select(labels: np.ndarray, manifest: CalibManifest) -> np.ndarray:
    """Indices of the calibration samples, deterministic from the manifest's seed."""
    rng = np.random.default_rng(manifest.seed)
    n = min(manifest.samples, len(labels))
    if not manifest.per_class:
        return np.sort(rng.choice(len(labels), size=n, replace=False))
    classes = np.unique(labels)
    per_class = max(1, n // len(classes))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picks))[:n]
