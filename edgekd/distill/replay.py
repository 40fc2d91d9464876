"""The K-view teacher replay cache (issue #13 item 5b; FKD, Shen & Xing 2022).

With augmentation a teacher normally runs live on every batch: on a CPU that is most of a
distillation epoch. Here each training sample has K fixed augmented views, seeded by (seed,
sample, epoch mod K) (edgekd.data.seeding.view_key), so view k is the same in any worker or run;
the teacher's logits for every (view, sample) are computed once and later epochs read them
instead of running the teacher. With mixup/cutmix the trainer repeats whole epochs (order,
views, mix pairs and lambdas, all seeded by epoch mod K), and row (k, i) holds the logits of
the mixed row whose first sample is i in epoch k: still exact.

What is stored, a (K, rows) .npy file, memory-mapped and read per batch (only the batch's rows
reach memory):
  full (`top_k` None)  every logit in float16, (K, rows, classes): every loss that reads logits (kd
                       at any temperature, dkd) sees the teacher's exact distribution, to fp16
                       rounding (relative 2^-11). N x K x classes x 2 bytes: 60,000 images x 8 views
                       x 10 classes = 9.6 MB; ImageNet-scale 1.28M x 10 x 1000 would be 25.6 GB.
  top-k (`top_k` k)    FKD's "marginal smoothing": per row the k largest logits (float16) and their
                       classes (int16), and one float16 `rest` = logsumexp(other logits) - log(classes - k):
                       the logit every other class is replayed with, so at temperature 1 the top-k
                       classes keep their exact probabilities and the remaining mass is spread evenly
                       over the others. 4k + 2 bytes per row: 1.28M x 10 x (k = 5) = 282 MB. Error bound
                       (temperature 1): the total-variation distance to the teacher's distribution is at
                       most the mass outside the top k (which is at most (classes - k) / classes);
                       k = classes stores every logit and replays them exactly as the full file does.

Under torchrun (`fill(..., dist=...)`) every rank runs the teacher on its own shard of each view
(the batches it trains on), rank 0 gathers each view's rows and alone writes the file, and after a
barrier every rank replays from it (each indexes it with its own batches' samples): built once,
sharded, and only rank 0 touches the file (a run directory on a shared filesystem, as the other
caches). With mixup/cutmix a rank's padded last sample (DistributedSampler repeats the head of the
order so every rank takes as many steps) is a second, differently mixed row of a sample another rank
also trains on: it gets its own row, `samples + rank`, so both stay exact.

The file's name is a hash of what its logits are of (the caller's `tag`: teacher checkpoints,
dataset identity, transform, views, seed, rows, top_k); it is written under `<name>.partial.npy` and
renamed when every view is in, so a complete file is never half-written. An interrupted build
starts over.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.distill.distributed import Dist, shard_size
from edgekd.errors import ConfigError, DataError

INDEX_DTYPES = (np.int16, np.int32)  # int16 holds class numbers below 32,768; int32 past that


class ReplayTeacher:
    """A teacher function (idx, inputs) -> logits that replays stored logits of view epoch mod K.

    model: the teacher (eval mode), run only by `fill`. path: the cache file (.npy). samples: N,
    the training split's size (the trainer's batch indices point into it). top_k: store only the k
    largest logits per row (None: all of them). ui: progress bar while filling (edgekd.ui.UI), or None."""

    def __init__(self, model: torch.nn.Module, path: Path, views: int, samples: int, *,
                 device: torch.device = torch.device("cpu"), ui=None, top_k: int | None = None):
        if top_k is not None and top_k < 1:
            raise ConfigError(f"distill.replay_topk {top_k}: keep at least one logit per view.",
                              "Set replay_topk to k >= 1, or 0 to store every logit.")
        self.model, self.path, self.views, self.samples = model, Path(path), views, samples
        self.device, self.ui, self.view, self.top_k = device, ui, 0, top_k
        self.build_seconds: float | None = None  # None: reused a complete file
        self._stored = None  # the (K, rows, ...) memmap, opened on first use
        self._padded_slot: int | None = None  # with mixing under torchrun: this rank's padded position
        self._extra_row = 0  # where that position's row lives (samples + rank)
        self._position = 0  # samples this rank has been asked for in the current epoch (or view)
        self._stored_rows = samples  # rows per view in the file (+ one per rank: see _shard_layout)
        self._classes_seen: int | None = None  # the class count of the logits this process encoded
        self._classes: int | None = None  # the stored file's, read once from its sidecar
        self._encoded = 0  # samples this process ran the teacher on while filling

    @property
    def complete(self) -> bool:
        return self.path.is_file()

    def set_epoch(self, epoch: int) -> None:
        self.view, self._position = epoch % self.views, 0

    def fill(self, inputs_of_view, autocast, *, dist: Dist | None = None, mixing: bool = False) -> None:
        """Run the teacher once on every view: inputs_of_view(k) yields (idx, inputs) of view k's steps,
        exactly as training makes them (under torchrun: this rank's shard); `autocast()` the training's
        autocast context (same numerics). mixing: the views are mixup/cutmix batches (rows pair within
        a batch), so a padded sample under torchrun needs a row of its own. Every rank calls it."""
        dist = dist or Dist()
        self._shard_layout(dist, mixing)
        if dist.broadcast_object(self.complete):  # one answer on every rank: all build, or none
            return
        if not self.samples:
            raise DataError("The teacher replay cache has no training samples to store logits of (the student's "
                            "training split is empty).", "Check data.train_fraction and the training folder.")
        started = time.perf_counter()
        partial = self.path.with_name(self.path.name.removesuffix(".npy") + ".partial.npy")
        out = None
        with self._progress(dist) as advance:
            for view in range(self.views):
                batches = self._teacher_batches(inputs_of_view(view), autocast, advance, dist.world_size)
                # one process writes batch by batch; under torchrun rank 0 gathers the view's rows of every rank
                parts = _gather_to_main(dist, _joined(list(batches))) if dist.enabled else batches
                for rows, records in parts if dist.is_main else ():
                    out = self._write(out, partial, view, rows, records)
        if not dist.all_reduce_sum([self._encoded])[0]:  # every rank raises alike, none waits for the others
            raise DataError("No training step reached the teacher replay cache (mixup/cutmix drop the last sample "
                            "of an odd batch: with batch_size 1 every batch is dropped).",
                            "Use a train.batch_size of 2 or more, or add training images.")
        if dist.is_main:
            self._finish(out, partial)
        dist.barrier()  # the file is complete before any rank replays it
        self.build_seconds = time.perf_counter() - started

    def __call__(self, idx: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
        if self._stored is None:
            self._stored = np.load(self.path, mmap_mode="r")
        stored = self._stored[self.view, self._rows(idx)]  # this batch's rows only
        logits = stored if self.top_k is None else expand_top_k(stored, self._classes or self.classes)
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(self.device, non_blocking=True)

    @property
    def classes(self) -> int:
        """The teacher's class count, from the file's sidecar (written with it)."""
        self._classes = int(json.loads(self._sidecar().read_text())["classes"])
        return self._classes

    def summary(self) -> dict:
        """What the report says about it: views, storage, shape, disk, build time (or reused)."""
        shape = np.load(self.path, mmap_mode="r").shape if self.complete else None
        disk = self.path.stat().st_size if self.complete else None
        return {"mode": "replay", "views": self.views, "file": self.path.name,
                "storage": "full" if self.top_k is None else f"top-{self.top_k}",
                "dtype": "float16" if self.top_k is None else _record_text(self.top_k, self.classes),
                "top_k": self.top_k, "shape": list(shape) if shape else None, "disk_bytes": disk,
                "disk_mb": None if disk is None else round(disk / 2**20, 3),
                "build_seconds": None if self.build_seconds is None else round(self.build_seconds, 2),
                "reused": self.build_seconds is None}

    def note(self) -> str:
        if not self.complete:
            return f"replay: {self.views} views per image, not built (no epoch was trained)"
        s = self.summary()
        how = "reused" if s["reused"] else f"built in {s['build_seconds']:.1f} s"
        what = (f"fp16 {tuple(s['shape'])}" if self.top_k is None else
                f"top-{self.top_k} of {self.classes} classes per view ({s['dtype']}: the rest spread evenly), "
                f"{tuple(s['shape'])} rows")
        return (f"replay: teacher logits of {self.views} fixed views per image, {what}, "
                f"{s['disk_mb']:.1f} MB on disk, {how} ({self.path.name})")

    # ------------------------------------------------------------ inside

    def _shard_layout(self, dist: Dist, mixing: bool) -> None:
        """With mixing under torchrun, this rank's padded position (if its shard has one) gets row samples + rank."""
        self._padded_slot, self._extra_row = None, self.samples + dist.rank
        if mixing and dist.enabled:
            per_rank = shard_size(self.samples, dist.world_size)
            if dist.rank + dist.world_size * (per_rank - 1) >= self.samples:  # the last position repeats the head
                self._padded_slot = per_rank - 1
        self._stored_rows = self.samples + (dist.world_size if mixing and dist.enabled else 0)

    def _rows(self, idx: torch.Tensor) -> np.ndarray:
        """The stored rows of a batch's samples: their indices, but a padded position's own row (see above).
        Positions count the samples asked for since the epoch (or view) began: mixing drops at most the
        epoch's last sample (an odd last batch), so the counted positions stay right."""
        rows = idx.numpy().astype(np.int64, copy=True)
        if self._padded_slot is not None:
            rows[self._position + np.arange(len(rows)) == self._padded_slot] = self._extra_row
        self._position += len(rows)
        return rows

    def _teacher_batches(self, batches, autocast, advance, world_size: int):
        """(rows, stored records) of each of this rank's steps of one view."""
        self._position = 0
        for idx, inputs in batches:
            self._encoded += len(idx)
            with torch.no_grad(), autocast():
                logits = self.model(inputs).float().cpu()
            yield self._rows(idx), self._encode(logits)
            advance(len(idx) * world_size)  # rank 0 shows it, for all ranks

    def _encode(self, logits: torch.Tensor) -> np.ndarray:
        """(B, classes) float32 logits -> what a row stores: all of them in fp16, or the top-k record."""
        classes = self._classes_seen = logits.shape[1]
        if self.top_k is None:
            return logits.numpy().astype(np.float16)
        if self.top_k > classes:
            raise ConfigError(f"distill.replay_topk {self.top_k} is more than the teacher's {classes} classes.",
                              f"Set replay_topk to at most {classes} ({classes} stores every logit).")
        values, indices = logits.topk(self.top_k, dim=1)
        others = logits.scatter(1, indices, float("-inf"))
        # every other class replays as this logit: their mass, logsumexp(others), spread over classes - k
        rest = (others.logsumexp(1) - math.log(classes - self.top_k)) if classes > self.top_k \
            else torch.full((len(logits),), float("-inf"))
        record = np.empty(len(logits), dtype=_record_dtype(self.top_k, classes))
        record["values"], record["indices"], record["rest"] = values.numpy(), indices.numpy(), rest.numpy()
        return record

    def _write(self, out, partial: Path, view: int, rows: np.ndarray, records: np.ndarray | None) -> np.memmap:
        """Rank 0: rows of one view into the partial file (created with the first records)."""
        if records is None:  # a rank without a step in this view
            return out
        if out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=records.dtype,
                                            shape=(self.views, self._stored_rows, *records.shape[1:]))
        out[view, rows] = records
        return out

    def _finish(self, out, partial: Path) -> None:
        """The sidecar (what the rows hold), then the file under its final name: complete or absent."""
        out.flush()
        del out
        self._sidecar().write_text(json.dumps({"views": self.views, "samples": self.samples,
                                               "rows": self._stored_rows, "top_k": self.top_k,
                                               "classes": self._classes_seen}))
        partial.replace(self.path)

    def _sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def _progress(self, dist: Dist):
        from edgekd.ui import progress_of

        return progress_of(self.ui if dist.is_main else None, f"teacher replay cache ({self.views} views)",
                           self.views * self.samples, unit="images")


def _record_dtype(k: int, classes: int) -> np.dtype:
    index = next(t for t in INDEX_DTYPES if classes <= np.iinfo(t).max + 1)
    return np.dtype([("values", np.float16, (k,)), ("indices", index, (k,)), ("rest", np.float16)])


def _record_text(k: int, classes: int) -> str:
    index = _record_dtype(k, classes)["indices"].base.name
    return f"fp16 values, {index} classes, one fp16 rest logit"


def _joined(steps: list) -> tuple:
    """One rank's (rows, records) of a view as one pair; records None when it took no step."""
    if not steps:
        return np.zeros(0, dtype=np.int64), None
    return np.concatenate([r for r, _ in steps]), np.concatenate([s for _, s in steps])


def expand_top_k(records: np.ndarray, classes: int) -> np.ndarray:
    """(B,) top-k records -> (B, classes) float32 logits: every class at the row's `rest` logit, the k
    stored classes at their own. softmax of it: the teacher's top-k probabilities exactly (to fp16), the
    remaining mass spread evenly over the other classes (FKD's marginal smoothing)."""
    logits = np.repeat(records["rest"].astype(np.float32)[:, None], classes, axis=1)
    np.put_along_axis(logits, records["indices"].astype(np.int64), records["values"].astype(np.float32), axis=1)
    return logits


def _gather_to_main(dist: Dist, part):
    """Every rank's `part` in a list on rank 0 (rank order); None on the others. One process: [part]."""
    if not dist.enabled:
        return [part]
    import torch.distributed as tdist

    parts = [None] * dist.world_size if dist.is_main else None
    tdist.gather_object(part, parts, dst=0)
    return parts
