"""A minimal reader/writer of the "edgekd.u8store/1" image format (numpy only, no torch).

The streaming data layer (edgekd.data) owns the general reader/writer of this format; this
one module is what the transfer-image generator needs, kept small so it can be swapped for
theirs. A store is a folder:

    images.u8    N records of C*H*W uint8, C-order (C, H, W), back to back
    labels.npy   (N,) int64; -1 = unlabeled
    index.json   {"format": "edgekd.u8store/1", "count", "channels", "height", "width", ...provenance}

Writing is resumable: the folder is `<name>.partial` until `finish()` renames it. Inside it,
batches are appended to images.u8 and labels.i64 (raw int64), each followed by
`progress.json` ({"count", "batches", "state"}) written atomically; a writer reopened after a
crash cuts both files back to the last recorded count. `state` names a file the caller wrote
for that batch (a generator's checkpoint), committed by the same progress write.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd.artifacts import write_json_atomic
from edgekd.errors import DataError

FORMAT = "edgekd.u8store/1"
IMAGES, LABELS, INDEX = "images.u8", "labels.npy", "index.json"
_RAW_LABELS, _PROGRESS = "labels.i64", "progress.json"
UNLABELED = -1


def partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def is_complete(path: Path) -> bool:
    return (Path(path) / INDEX).is_file()


class U8StoreWriter:
    """Appends (N, C, H, W) uint8 batches to `<path>.partial`; `finish()` makes `<path>`."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path, self.shape = Path(path), tuple(int(s) for s in shape)
        self.dir = partial_dir(self.path)
        self.dir.mkdir(parents=True, exist_ok=True)
        progress = _read_json(self.dir / _PROGRESS) or {"count": 0, "batches": 0, "state": None}
        self.count, self.batches, self.state = progress["count"], progress["batches"], progress["state"]
        self._cut_to(self.count)  # drop a batch that was appended but never committed
        self._drop_states(keep=self.state)

    @property
    def record_bytes(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def state_path(self) -> Path | None:
        """The caller's checkpoint committed with the last batch, if any."""
        return self.dir / self.state if self.state else None

    def append(self, images: np.ndarray, labels: np.ndarray, write_state: Callable[[Path], None] | None = None) -> None:
        """One batch: images (n, C, H, W) uint8, labels (n,) int64. `write_state(path)` saves the
        caller's checkpoint for this point; it becomes current only with the progress record."""
        if images.dtype != np.uint8 or images.shape[1:] != self.shape or len(labels) != len(images):
            raise DataError(f"A batch of {images.dtype} {images.shape} with {len(labels)} labels does not fit a "
                            f"store of uint8 {self.shape} records.", "This is a bug in the caller: report it.")
        _append(self.dir / IMAGES, np.ascontiguousarray(images).tobytes())
        _append(self.dir / _RAW_LABELS, np.asarray(labels, dtype="<i8").tobytes())
        state = None
        if write_state is not None:
            state = f"state-{self.batches + 1:06d}.pt"
            write_state(self.dir / state)
        self.count, self.batches = self.count + len(images), self.batches + 1
        self.state = state
        write_json_atomic(self.dir / _PROGRESS, {"count": self.count, "batches": self.batches, "state": state})
        self._drop_states(keep=state)

    def labels(self) -> np.ndarray:
        """Every label written so far, (count,) int64."""
        return np.fromfile(self.dir / _RAW_LABELS, dtype="<i8").astype(np.int64)

    def finish(self, provenance: dict) -> Path:
        """Write labels.npy and index.json, drop the progress files, rename to the final name."""
        np.save(self.dir / LABELS, self.labels())
        (self.dir / IMAGES).touch()
        c, h, w = self.shape
        for name in (_RAW_LABELS, _PROGRESS):
            (self.dir / name).unlink(missing_ok=True)
        self._drop_states(keep=None)
        write_json_atomic(self.dir / INDEX, {"format": FORMAT, "count": self.count, "channels": c, "height": h,
                                             "width": w, **provenance})
        if self.path.exists():  # a stale incomplete folder at the final name (never a complete one: callers check)
            shutil.rmtree(self.path)
        self.dir.rename(self.path)
        return self.path

    def _drop_states(self, keep: str | None) -> None:
        """Remove checkpoints other than the committed one (superseded, or written for a lost batch)."""
        for file in self.dir.glob("state-*"):
            if file.name != keep:
                file.unlink()

    def _cut_to(self, count: int) -> None:
        for name, size in ((IMAGES, count * self.record_bytes), (_RAW_LABELS, count * 8)):
            file = self.dir / name
            if not file.exists():
                file.touch()
            if file.stat().st_size < size:
                raise DataError(f"{file} holds fewer bytes than its progress record says ({size}).",
                                f"The partial store is damaged: delete {self.dir} to generate it again.")
            os.truncate(file, size)


@dataclass
class U8Store:
    """A complete store, images memory-mapped: `store[i]` reads one record from disk."""

    path: Path
    index: dict
    images: np.ndarray  # (N, C, H, W) uint8 memmap
    labels: np.ndarray  # (N,) int64

    @property
    def count(self) -> int:
        return int(self.index["count"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.index["channels"]), int(self.index["height"]), int(self.index["width"])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.asarray(self.images[i]), int(self.labels[i])

    def batches(self, batch_size: int):
        """(images uint8 (n, C, H, W), labels (n,)) in order, one batch in memory at a time."""
        for start in range(0, self.count, batch_size):
            yield np.asarray(self.images[start : start + batch_size]), self.labels[start : start + batch_size]


def open_store(path: str | Path) -> U8Store:
    path = Path(path)
    index = _read_json(path / INDEX)
    if index is None or index.get("format") != FORMAT:
        hint = (f"{partial_dir(path)} exists: the generation was interrupted; run it again to finish it."
                if partial_dir(path).is_dir() else "Point at a folder written by edgekd (it holds index.json).")
        raise DataError(f"{path} is not a complete {FORMAT} store.", hint)
    count, c, h, w = (int(index[k]) for k in ("count", "channels", "height", "width"))
    size = (path / IMAGES).stat().st_size if (path / IMAGES).is_file() else -1
    labels = np.load(path / LABELS) if (path / LABELS).is_file() else None
    if size != count * c * h * w or labels is None or labels.shape != (count,):
        raise DataError(f"{path}: images.u8 ({size} bytes) or labels.npy do not hold the {count} records of "
                        f"{c}x{h}x{w} its index.json announces.", f"The store is damaged: delete {path} and regenerate it.")
    images = (np.memmap(path / IMAGES, dtype=np.uint8, mode="r", shape=(count, c, h, w)) if count
              else np.zeros((0, c, h, w), np.uint8))
    return U8Store(path, index, images, labels.astype(np.int64))


def _append(file: Path, data: bytes) -> None:
    with open(file, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _read_json(file: Path) -> dict | None:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{file} is not valid JSON ({exc.msg}).", f"Delete {file.parent} and regenerate it.") from None
