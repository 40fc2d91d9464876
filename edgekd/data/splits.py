"""Train / val / test splits: pure, seeded, class-stratified functions of label arrays.

Selection (best epoch, early stopping, the INT8 gate) uses `val`; every accuracy the
report shows is on `test`, used for no choice (issue #11). The rules per source:

    digits        three-way stratified split of the one pool
    idx           the official test file is `test`; `val` is carved from the training file
    imagefolder   ROOT/test (and ROOT/val) when present; what is missing is carved from
                  train (split layout) or from the one pool (flat ROOT/<class>/ layout)

Carving: each class's indices are shuffled once by a generator seeded with `seed`
(classes in sorted order); `val` takes the head of that order and `test` the tail. So
`three_way_split(labels, f, 0, seed)` is exactly the former two-way `stratified_split`,
and changing `test_fraction` never moves a sample between train and val that it does
not itself take.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.data.listing import FileList, Listing


@dataclass(frozen=True)
class SplitIndices:
    """Sorted row indices into the labels the split was drawn from."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __iter__(self):  # train, val, test = three_way_split(...)
        return iter((self.train, self.val, self.test))

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def three_way_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> SplitIndices:
    """Per class: `val` = the first max(1, round(n * val_fraction)) of a seeded shuffle, `test` = the last
    max(1, round(n * test_fraction)) (none when a fraction is 0); the rest is `train`.

    A class too small for all three keeps one training sample, then gives test its share, then val what
    is left (a class of two: one train, one test, no val): a rare class never stops a run, and the
    report's test split still covers it."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_test = min(_take(len(idx), test_fraction), len(idx) - 1)
        n_val = min(_take(len(idx), val_fraction), len(idx) - 1 - n_test)
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[len(idx) - n_test :])
        parts["train"].append(idx[n_val : len(idx) - n_test])
    return SplitIndices(**{k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()})


def folder_splits(folders: dict[str, np.ndarray], val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """ImageFolder rule over the label arrays of the folders found ("all", or "train"/"val"/"test"):
    each split -> (folder it comes from, rows of that folder). Missing splits are carved from train
    (or from the one pool), with the same seeded per-class order as `three_way_split`."""
    if "all" in folders:
        s = three_way_split(folders["all"], val_fraction, test_fraction, seed)
        return {"train": ("all", s.train), "val": ("all", s.val), "test": ("all", s.test)}
    carve_val, carve_test = "val" not in folders, "test" not in folders
    s = three_way_split(folders["train"], val_fraction if carve_val else 0.0,
                        test_fraction if carve_test else 0.0, seed)
    whole = {name: np.arange(len(labels), dtype=np.int64) for name, labels in folders.items()}
    return {"train": ("train", s.train),
            "val": ("train", s.val) if carve_val else ("val", whole["val"]),
            "test": ("train", s.test) if carve_test else ("test", whole["test"])}


def imagefolder_splits(listing: Listing, val_fraction: float, test_fraction: float, seed: int) -> dict[str, FileList]:
    """The listing's train / val / test file lists, by `folder_splits`' rule."""
    labels = {name: files.labels for name, files in listing.folders.items()}
    plan = folder_splits(labels, val_fraction, test_fraction, seed)
    return {split: listing.folders[folder].subset(rows) for split, (folder, rows) in plan.items()}


def imagefolder_summary(root, val_fraction: float, test_fraction: float, seed: int, cache_root=None) -> str:
    """Images per class per split as `edgekd validate` prints it: the folders (a Path) or the webdataset
    shards (a str spec: tar headers; pipe:/URL shards are copied into `cache_root` first) listed, nothing decoded."""
    from edgekd.data.listing import format_summary, list_imagefolder, summarise
    from edgekd.data.tarlist import list_shards

    listing = list_shards(root, cache_root or Path(".edgekd-cache")) if isinstance(root, str) else list_imagefolder(root)
    splits = imagefolder_splits(listing, val_fraction, test_fraction, seed)
    return format_summary(summarise(listing.classes, {name: files.labels for name, files in splits.items()}))


def _take(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, int(round(n * fraction)))
