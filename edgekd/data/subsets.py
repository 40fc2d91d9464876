"""Bounded, stratified subsets (calibration, parity, the device's test set), written without
decoding the rest of the split and without holding more than a batch.

    rows = stratified_subset(labels, cap=2000, seed=0)
    write_subset(eval_dataset, rows, run_dir / "data" / "val.npz", extra={"classes": np.array(classes)})

The .npz holds x (k, C, H, W) float32 (the eval transform's output), y (k,) int64 and rows (k,):
the same keys np.savez would write, streamed batch by batch into the zip member.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgekd.errors import DataError
from edgekd.ui import progress_of


def stratified_subset(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Sorted rows: all of them when len(labels) <= cap; else `cap` rows with each class's share kept
    (largest remainder; every class at least one row while cap >= classes), drawn with `seed`."""
    labels = np.asarray(labels)
    if len(labels) <= cap:
        return np.arange(len(labels), dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * cap / len(labels)
    take = np.floor(quota).astype(np.int64)
    if cap >= len(classes):
        take = np.maximum(take, 1)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while take.sum() < cap:  # hand out what rounding left, largest remainders first
        for k in order:
            if take.sum() < cap and take[k] < counts[k]:
                take[k] += 1
    while take.sum() > cap:  # the at-least-one rule overshot: trim the largest
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def write_subset(dataset, rows: np.ndarray, path: Path, *, batch_size: int = 64, workers: int | None = None,
                 extra: dict[str, np.ndarray] | None = None, ui=None) -> int:
    """Stream dataset[rows] (SampleDataset with an eval transform) into `path` (.npz); returns the count."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from edgekd.data.loader import default_workers

    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        raise DataError(f"No samples to write to {path}.", "The split is empty: check the dataset and its fractions.")
    workers = default_workers() if workers is None else workers
    loader = DataLoader(Subset(dataset, rows.tolist()), batch_size=batch_size, num_workers=workers,
                        generator=torch.Generator())
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    progress = progress_of(ui, f"writing {path.name}", len(rows), "images")
    with zipfile.ZipFile(partial, "w", allowZip64=True) as zf, progress as advance:
        labels = []
        x_member = None
        for x, y, _ in loader:
            if x_member is None:
                x_member = zf.open("x.npy", "w", force_zip64=True)
                np.lib.format.write_array_header_2_0(
                    x_member, {"descr": "<f4", "fortran_order": False, "shape": (len(rows), *x.shape[1:])})
            x_member.write(x.numpy().astype("<f4", copy=False).tobytes())
            labels.append(y.numpy())
            advance(len(y))
        if x_member is not None:
            x_member.close()
        arrays = {"y": np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64), "rows": rows}
        for name, value in {**arrays, **(extra or {})}.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)
    partial.replace(path)
    return len(rows)
