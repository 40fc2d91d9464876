"""`data.kind: synthetic`: a run with no real image, only the teacher (and its classes and input shape).

`NoRealData` stands where `Data` / `FolderData` stand (edgekd.data), so every stage reads one
interface: its `train` and `test` splits are empty (nothing is labelled: no accuracy can be
measured, the report says so), and its `val` split is data/val.npz as the synthetic stage wrote it
(`data.synthetic.holdout` generated images held out of training, labelled with the teacher's
argmax): every choice (best epoch, early stopping) is then agreement with the teacher on images the
student never trained on, never a fabricated accuracy. Before the synthetic stage has run there is
no val split (the teacher stage, which needs none here, runs before it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edgekd.data import Preprocess
from edgekd.errors import DataError

SOURCE = "none: no real labelled data (data.kind: synthetic); images are generated from the teacher"
UNMEASURED = "accuracy unmeasured (no real labelled data)"
VAL_ORIGIN = "held-out synthetic images (data.synthetic.holdout), labelled with the teacher's argmax"


class NoRealData:
    def __init__(self, classes: list[str], preprocess: Preprocess, val_file: Path):
        self.classes, self.preprocess, self.val_file = list(classes), preprocess, Path(val_file)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        p = self.preprocess
        return (p.channels, p.input_size, p.input_size)

    def _empty(self):
        from edgekd.data.splitset import TensorSplit

        return TensorSplit(np.zeros((0, *self.input_shape), np.float32), np.zeros(0, np.int64))

    @property
    def train(self):
        return self._empty()

    @property
    def test(self):
        return self._empty()

    @property
    def val(self):
        return held_out_split(self.val_file)

    @property
    def train_y(self) -> np.ndarray:
        return np.zeros(0, np.int64)

    @property
    def test_y(self) -> np.ndarray:
        return np.zeros(0, np.int64)

    @property
    def val_y(self) -> np.ndarray:
        return self.val.labels

    def check(self, ui=None) -> None:
        """Nothing to read: there are no files."""

    def fingerprint(self) -> str:
        """The classes and the preprocessing: all a run without data knows of its inputs."""
        what = json.dumps([self.classes, self.preprocess.to_dict()]).encode()
        return hashlib.sha256(what).hexdigest()

    def summary(self) -> dict:
        return {"source": SOURCE, "real_data": False, "accuracy": UNMEASURED,
                "splits": {"train": 0, "val": 0, "test": 0},
                "split_origin": {"val": VAL_ORIGIN, "test": UNMEASURED}, "classes": self.classes,
                "preprocess": self.preprocess.to_dict()}


def held_out_split(val_file: Path):
    """The held-out synthetic images (teacher-labelled), once the synthetic stage wrote them."""
    from edgekd.data.splitset import TensorSplit

    if not val_file.is_file():
        raise DataError(f"{val_file} is missing: without a real validation split the synthetic stage writes the "
                        "held-out images every choice is made on.",
                        "Run edgekd compress again (the synthetic stage runs before the student).")
    with np.load(val_file) as npz:
        return TensorSplit(npz["x"], npz["y"])


class ReportOnlyData:
    """data.use: report: real labelled data whose test split only scores the report. Its training split is
    never read (it looks empty: nothing trains on real labels) and its validation split is replaced by the
    held-out synthetic images, so no choice sees a real label. Everything else is the real data's."""

    def __init__(self, real, val_file: Path):
        self._real, self.val_file = real, Path(val_file)

    def __getattr__(self, name):  # classes, preprocess, test, check, fingerprint, ...
        return getattr(self._real, name)

    @property
    def train(self):
        from edgekd.data.splitset import TensorSplit

        return TensorSplit(np.zeros((0, *self._real.input_shape), np.float32), np.zeros(0, np.int64))

    @property
    def train_y(self) -> np.ndarray:
        return np.zeros(0, np.int64)

    @property
    def val(self):
        return held_out_split(self.val_file)

    @property
    def val_y(self) -> np.ndarray:
        return self.val.labels

    def summary(self) -> dict:
        real = self._real.summary()
        return {**real, "use": "report", "split_origin": {**real.get("split_origin", {}), "val": VAL_ORIGIN},
                "unused": "the real train and val splits (data.use: report: only the test split scores the report)"}


def no_real_data(cfg, teacher_model: str | None, val_file: Path) -> NoRealData:
    """data.kind: synthetic: the classes as configured, normalisation from data.mean/std or the teacher's
    timm config (as for an image folder: the exported model then takes real pictures the way the teacher did)."""
    from edgekd.data import _imagefolder_preprocess

    return NoRealData(cfg.class_names, _imagefolder_preprocess(cfg, teacher_model), val_file)
