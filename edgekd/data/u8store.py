"""The uint8 image store: a folder any tool can write and edgekd reads per sample.

    <name>/images.u8    N records of C*H*W uint8, C-order (channel, row, column), back to back
    <name>/labels.npy   int64 (N,), -1 = unlabeled
    <name>/index.json   {"format": "edgekd.u8store/1", "count": N, "channels": C, "height": H,
                         "width": W, ...provenance (free-form keys)}

Written under `<name>.partial` and renamed when complete, so a folder without that suffix is
whole. `U8Writer` can resume an interrupted write (its state.json lives only in .partial).
Reads use os.pread, one record at a time: a 100k-image store costs page cache, not this
process's memory, and each DataLoader worker opens its own descriptor.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from edgekd.errors import DataError

FORMAT = "edgekd.u8store/1"


class U8Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        index_file = self.path / "index.json"
        if not index_file.is_file():
            partial = self.path.with_name(self.path.name + ".partial")
            raise DataError(f"{self.path} is not a uint8 store (no index.json).",
                            f"{partial} exists: its write was interrupted; run what wrote it again to finish it."
                            if partial.is_dir() else
                            "Point at a folder written by edgekd (or in the format docs/data.md describes).")
        self.index = json.loads(index_file.read_text())
        if self.index.get("format") != FORMAT:
            raise DataError(f"{index_file} has format {self.index.get('format')!r}, expected {FORMAT!r}.",
                            "Rebuild the store with this edgekd.")
        self.shape = (int(self.index["channels"]), int(self.index["height"]), int(self.index["width"]))
        self.count = int(self.index["count"])
        self.record_bytes = int(np.prod(self.shape))
        self.labels = np.load(self.path / "labels.npy").astype(np.int64, copy=False)
        size = (self.path / "images.u8").stat().st_size
        if len(self.labels) != self.count or size != self.count * self.record_bytes:
            raise DataError(f"{self.path} is inconsistent: index says {self.count} records of {self.record_bytes} "
                            f"bytes, images.u8 has {size} bytes and labels.npy {len(self.labels)} labels.",
                            "Delete the folder; it is rebuilt (or rewrite it).")
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.count

    def read(self, i: int) -> np.ndarray:
        """Record i as a (C, H, W) uint8 array (read-only view of the bytes read)."""
        if not 0 <= i < self.count:
            raise IndexError(f"record {i} of a {self.count}-record store")
        if self._pid != os.getpid():  # first read in this process (or a forked worker): own descriptor
            self._fd, self._pid = os.open(self.path / "images.u8", os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, self.record_bytes, i * self.record_bytes)
        if len(data) != self.record_bytes:
            raise DataError(f"{self.path}/images.u8 was truncated while in use (record {i}).", "Rebuild the store.")
        return np.frombuffer(data, dtype=np.uint8).reshape(self.shape)

    def __getstate__(self):  # pickled into spawned workers: descriptors do not travel
        return {**self.__dict__, "_fd": None, "_pid": None}


class U8Writer:
    """Append (C, H, W) uint8 records; `finish` writes labels.npy and index.json and renames.

    key: what the caller is writing (e.g. the dataset identity). An existing `.partial` with the
    same key and shape is resumed (truncated to its last checkpoint); anything else there (another
    key, or files shorter than the checkpoint says: a damaged write) is removed."""

    def __init__(self, path: Path, shape: tuple[int, int, int], key: str = ""):
        self.final = Path(path)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.shape, self.key = tuple(int(s) for s in shape), key
        self.record_bytes = int(np.prod(self.shape))
        self.resumed = self._resume()  # the extra fields of the last checkpoint, or {}
        self.records = int(self.resumed.get("records", 0))
        self._images = open(self.partial / "images.u8", "ab")
        self._labels = open(self.partial / "labels.bin", "ab")

    def append(self, image: np.ndarray, label: int) -> None:
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"record must be uint8 {self.shape}, got {image.dtype} {image.shape}")
        self._images.write(np.ascontiguousarray(image).tobytes())
        self._labels.write(np.int64(label).tobytes())
        self.records += 1

    def labels(self) -> np.ndarray:
        """Every label appended so far (resumed ones included), int64 (records,)."""
        self._labels.flush()
        return np.fromfile(self.partial / "labels.bin", dtype=np.int64)[: self.records]

    def checkpoint(self, **extra) -> None:
        """Flush, and note how far the write got (plus the caller's `extra`) for a resume."""
        self._images.flush()
        self._labels.flush()
        state = {"key": self.key, "shape": list(self.shape), **extra, "records": self.records}
        tmp = self.partial / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.partial / "state.json")

    def finish(self, **provenance) -> U8Store:
        self.close()
        labels = np.fromfile(self.partial / "labels.bin", dtype=np.int64)
        np.save(self.partial / "labels.npy", labels)
        index = {"format": FORMAT, "count": self.records, "channels": self.shape[0], "height": self.shape[1],
                 "width": self.shape[2], **provenance}
        (self.partial / "index.json").write_text(json.dumps(index, indent=1))
        for leftover in ("labels.bin", "state.json"):
            (self.partial / leftover).unlink(missing_ok=True)
        if self.final.exists():
            shutil.rmtree(self.final)
        self.partial.rename(self.final)
        return U8Store(self.final)

    def close(self) -> None:
        self._images.close()
        self._labels.close()

    def _resume(self) -> dict:
        state_file = self.partial / "state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            records = int(state.get("records", 0))
            sizes = {"images.u8": records * self.record_bytes, "labels.bin": records * 8}
            if (state.get("key") == self.key and tuple(state.get("shape", ())) == self.shape
                    and all(_size(self.partial / name) >= size for name, size in sizes.items())):
                for name, size in sizes.items():  # drop records appended after the last checkpoint
                    os.truncate(self.partial / name, size)
                return state
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        return {}


def _size(file: Path) -> int:
    return file.stat().st_size if file.is_file() else -1


def write_u8_store(path: Path, images, labels, **provenance) -> U8Store:
    """Write an iterable of (C, H, W) uint8 arrays (all one shape) with their labels as a store at `path`."""
    labels = np.asarray(labels, dtype=np.int64)
    writer = None
    for image, label in zip(images, labels, strict=True):
        writer = writer or U8Writer(path, image.shape)
        writer.append(image, int(label))
    if writer is None:
        raise DataError(f"No images to write to {path}.", "Pass at least one image.")
    return writer.finish(**provenance)
