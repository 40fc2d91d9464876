"""An ImageFolder (or webdataset shards, listed as tar members: edgekd.data.tarlist) as the pipeline holds it: the file list, its split identities, and per split a
StreamSplit whose samples DataLoader workers decode (or read from the uint8 cache) one at a time.

Opening it lists the folders (a stat per file, no decoding) and splits the lists (edgekd.data.splits).
`check(ui)` is the data stage's pass over every image: the uint8 cache is built (it checks while it
decodes), or each image is decoded once; `on_bad_image: error` stops with every bad file named, `skip`
leaves them out and the data summary lists them, so later stages (and runs) leave out the same files.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np

from edgekd.data import CARVED
from edgekd.data.listing import FileList, list_imagefolder, summarise
from edgekd.data.splits import imagefolder_splits
from edgekd.data.splitset import StreamSplit

SPLITS = ("train", "val", "test")


class FolderData:
    def __init__(self, cfg, preprocess, *, cache_root: Path, device="cpu", skipped: list[str] = (), ui=None):
        self.cfg, self.preprocess, self.cache_root, self.device = cfg, preprocess, Path(cache_root), device
        if cfg.kind == "webdataset":  # tar shards listed from their headers (edgekd.data.tarlist)
            from edgekd.data.tarlist import list_shards

            listing, self.source = list_shards(cfg.shards, self.cache_root, ui), f"webdataset:{cfg.shards}"
        else:
            listing, self.source = list_imagefolder(cfg.path, ui), f"imagefolder:{cfg.path}"
        self.classes = list(listing.classes)
        self.files = imagefolder_splits(listing, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        folders = {"val": "val", "test": "test"} if listing.split_folders else {}
        self.origin = {split: str(listing.root / folders[split]) if split in folders and split in listing.folders
                       else CARVED for split in ("val", "test")}
        self.skipped = list(skipped)  # relative paths left out (on_bad_image: skip)
        self.cache: dict[str, dict] = {}  # split -> cache_summary, with data.cache: uint8

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def identities(self) -> dict[str, str]:
        """Per split: sha256 of its files (path, size, mtime, label), the classes and the preprocessing."""
        from edgekd.data.identity import split_identities

        return split_identities(self.files, self.preprocess.to_dict())

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identities, sort_keys=True).encode()).hexdigest()

    def check(self, ui=None) -> None:
        """Decode every image once (building the uint8 cache with data.cache: uint8); bad images per
        data.on_bad_image. Run by the data stage, before any training."""
        from edgekd.data.passes import check_images
        from edgekd.data.u8cache import cache_side

        if self.cfg.cache == "uint8":
            for split in SPLITS:
                self._store(split, ui)
            return
        bad = []
        for split in SPLITS:
            _, found = check_images(self.files[split], self.preprocess.channels, cache_side(self.preprocess),
                                    self.cfg.on_bad_image, workers=self.cfg.workers, ui=ui)
            bad += [b.path for b in found]
        self.skipped = sorted(bad)
        self.__dict__.pop("_splits", None)

    def _store(self, split: str, ui=None):
        from edgekd.data.u8cache import build_u8_cache, cache_summary

        store = build_u8_cache(self.files[split], self.preprocess, self.cache_root,
                               on_bad_image=self.cfg.on_bad_image, workers=self.cfg.workers, ui=ui)
        self.cache[split] = cache_summary(store)
        self.skipped = sorted(set(self.skipped) | {b["path"] for b in store.index.get("skipped", [])})
        return store

    def _kept(self, files: FileList) -> FileList:
        if not self.skipped:
            return files
        dropped = set(self.skipped)
        return files.subset(np.array([i for i in range(len(files)) if files.relpath(i) not in dropped], dtype=np.int64))

    @cached_property
    def _splits(self) -> dict[str, StreamSplit]:
        from edgekd.data.datasets import FileSource, SampleDataset, U8Source
        from edgekd.data.transforms import eval_transform, train_transform
        from edgekd.data.u8cache import cache_side

        pre, out = self.preprocess, {}
        for split in SPLITS:
            if self.cfg.cache == "uint8":
                source = U8Source(self._store(split))
            else:  # draft-decoded down to the cache's side: the whole picture, at (at least) that resolution
                source = FileSource(self._kept(self.files[split]), pre.channels, cache_side(pre))
            augmented = None
            if split == "train" and self.cfg.augment == "timm":
                augmented = SampleDataset(source, train_transform(self.cfg.train_transform, pre))
            out[split] = StreamSplit(SampleDataset(source, eval_transform(pre)), workers=self.cfg.workers,
                                     device=self.device, augmented=augmented)
        return out

    @property
    def train(self) -> StreamSplit:
        return self._splits["train"]

    @property
    def val(self) -> StreamSplit:
        return self._splits["val"]

    @property
    def test(self) -> StreamSplit:
        return self._splits["test"]

    @property
    def train_y(self) -> np.ndarray:
        return self.train.labels

    @property
    def val_y(self) -> np.ndarray:
        return self.val.labels

    @property
    def test_y(self) -> np.ndarray:
        return self.test.labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        pre = self.preprocess
        return (pre.channels, pre.input_size, pre.input_size)

    def summary(self) -> dict:
        splits = {split: int(len(getattr(self, split))) for split in SPLITS}
        out = {"source": self.source, "splits": splits, "split_origin": self.origin, "classes": self.classes,
               "preprocess": self.preprocess.to_dict(), "identities": self.identities,
               "per_class": summarise(self.classes, {s: getattr(self, s).labels for s in SPLITS}),
               "skipped_images": self.skipped}
        if self.cache:
            out["cache"] = self.cache
        return out
