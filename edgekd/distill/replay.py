"""The K-view teacher replay cache (issue #13 item 5b; FKD, Shen & Xing 2022).

With augmentation a teacher normally runs live on every batch: on a CPU that is most of a
distillation epoch. Here each training sample has K fixed augmented views, seeded by (seed,
sample, epoch mod K) (edgekd.data.seeding.view_key), so view k is the same in any worker or run;
the teacher's logits for every (view, sample) are computed once and later epochs read them
instead of running the teacher. With mixup/cutmix the trainer repeats whole epochs (order,
views, mix pairs and lambdas, all seeded by epoch mod K), and row (k, i) holds the logits of
the mixed row whose first sample is i in epoch k: still exact.

What is stored: the full logits in float16, a (K, N, classes) .npy file, memory-mapped and read
per batch (only the batch's rows reach memory). Full fp16 rather than FKD's top-k: every loss
that reads logits (kd at any temperature, dkd) sees the teacher's exact distribution, not a
truncated one renormalised, and replay matches the live teacher to fp16 rounding (relative
2^-11). The price is N x K x classes x 2 bytes: 60,000 images x 8 views x 10 classes = 9.6 MB;
100k x 10 x 100 = 200 MB; an ImageNet-scale 1.28M x 10 x 1000 would be 25.6 GB, where top-k
(FKD keeps 5-10 values per crop) is the way, not implemented here.

The file's name is a hash of what its logits are of (the caller's `tag`: teacher checkpoints,
dataset identity, transform, views, seed, rows); it is written under `<name>.partial.npy` and
renamed when every view is in, so a complete file is never half-written. An interrupted build
starts over.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


class ReplayTeacher:
    """A teacher function (idx, inputs) -> logits that replays stored logits of view epoch mod K.

    model: the teacher (eval mode), run only by `fill`. path: the cache file (.npy). samples: N,
    the training split's size (the trainer's batch indices point into it). ui: progress bar while
    filling (edgekd.ui.UI), or None."""

    def __init__(self, model: torch.nn.Module, path: Path, views: int, samples: int, *,
                 device: torch.device = torch.device("cpu"), ui=None):
        self.model, self.path, self.views, self.samples = model, Path(path), views, samples
        self.device, self.ui, self.view = device, ui, 0
        self.build_seconds: float | None = None  # None: reused a complete file
        self._logits = None  # the (K, N, classes) memmap, opened on first use

    @property
    def complete(self) -> bool:
        return self.path.is_file()

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % self.views

    def fill(self, inputs_of_view, autocast) -> None:
        """Run the teacher once on every view: inputs_of_view(k) yields (idx, inputs) of view k's steps,
        exactly as training makes them; `autocast()` the training's autocast context (same numerics)."""
        if self.complete:
            return
        started = time.perf_counter()
        partial = self.path.with_name(self.path.name.removesuffix(".npy") + ".partial.npy")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = None
        with self._progress() as advance:
            for view in range(self.views):
                for idx, inputs in inputs_of_view(view):
                    with torch.no_grad(), autocast():
                        logits = self.model(inputs).float().cpu().numpy()
                    if out is None:  # the class count is known from the first batch
                        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16,
                                                        shape=(self.views, self.samples, logits.shape[1]))
                    out[view, idx.numpy()] = logits
                    advance(len(idx))
        out.flush()
        del out
        partial.replace(self.path)
        self.build_seconds = time.perf_counter() - started

    def __call__(self, idx: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
        if self._logits is None:
            self._logits = np.load(self.path, mmap_mode="r")
        rows = np.asarray(self._logits[self.view, idx.numpy()], dtype=np.float32)  # (B, classes): this batch only
        return torch.from_numpy(rows).to(self.device, non_blocking=True)

    def summary(self) -> dict:
        """What the report says about it: views, shape, disk, build time (or reused)."""
        shape = np.load(self.path, mmap_mode="r").shape if self.complete else None
        return {"mode": "replay", "views": self.views, "file": self.path.name, "dtype": "float16",
                "shape": list(shape) if shape else None,
                "disk_bytes": self.path.stat().st_size if self.complete else None,
                "disk_mb": round(self.path.stat().st_size / 2**20, 3) if self.complete else None,
                "build_seconds": None if self.build_seconds is None else round(self.build_seconds, 2),
                "reused": self.build_seconds is None}

    def note(self) -> str:
        if not self.complete:
            return f"replay: {self.views} views per image, not built (no epoch was trained)"
        s = self.summary()
        how = "reused" if s["reused"] else f"built in {s['build_seconds']:.1f} s"
        return (f"replay: teacher logits of {self.views} fixed views per image, fp16 {tuple(s['shape'])}, "
                f"{s['disk_mb']:.1f} MB on disk, {how} ({self.path.name})")

    def _progress(self):
        from edgekd.ui import progress_of

        return progress_of(self.ui, f"teacher replay cache ({self.views} views)", self.views * self.samples,
                           unit="images")
