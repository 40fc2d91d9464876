"""The student's training samples with `data.synthetic`: the transfer store, alone or mixed per batch.

The store (synthetic/transfer.json names it) holds the teacher's input at its own resolution as
uint8; it is read per sample through the data layer (U8Source in a SampleDataset, DataLoader
workers) with the teacher's eval transform at crop_pct 1 (no resize: a 224-px timm teacher's 0.875
would zoom every image) and the store's own mean/std, so the student sees exactly the tensor the
teacher was optimised against. Its labels are only the teacher's argmax: they are withheld (-1),
so the student learns from the teacher's soft targets alone (as for `unlabeled_fraction`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgekd.data import Preprocess, stratified_subsample
from edgekd.data.datasets import SampleDataset, U8Source
from edgekd.data.mixsplit import MixedSplit
from edgekd.data.splitset import StreamSplit
from edgekd.data.transforms import eval_transform, train_transform
from edgekd.data.u8store import U8Store
from edgekd.errors import DataError
from edgekd.pipeline.context import RunContext


def store_preprocess(index: dict, pre: Preprocess) -> Preprocess:
    """How the store's uint8 records become the teacher's input: 0..255 pixels, its mean/std, no resize."""
    return dataclasses.replace(pre, input_size=int(index["height"]), channels=int(index["channels"]),
                               mean=tuple(index["mean"]), std=tuple(index["std"]), crop_pct=1.0, pixel_max=255.0)


def synthetic_split(ctx: RunContext) -> StreamSplit:
    """The transfer set's training images (all but the held-out ones) as a training split, labels withheld."""
    from edgekd.pipeline.synth_stage import transfer_summary

    summary = transfer_summary(ctx)
    if summary is None:
        raise DataError(f"{ctx.run_dir / 'synthetic/transfer.json'} is missing: the synthetic stage has not run.",
                        "Run edgekd compress again (it generates the transfer set before the student).")
    store = U8Store(ctx.run_dir / summary["path"])
    split = _store_split(ctx, store, augment=True)
    rows = training_rows(ctx, store.labels)
    return split.take(rows, labels=np.full(len(rows), -1, dtype=np.int64))


def _store_split(ctx: RunContext, store: U8Store, augment: bool) -> StreamSplit:
    """Every image of the store through the teacher's exact view, with the teacher's labels."""
    pre = store_preprocess(store.index, ctx.data.preprocess)
    augmented = None
    if augment and ctx.config.data.augment == "timm":
        augmented = SampleDataset(U8Source(store), train_transform(ctx.config.data.train_transform, pre),
                                  seed=ctx.config.seed)
    dataset = SampleDataset(U8Source(store), eval_transform(pre), seed=ctx.config.seed)
    return StreamSplit(dataset, workers=ctx.config.data.workers, device=ctx.device, labels=store.labels.copy(),
                       augmented=augmented)


def held_out_rows(ctx: RunContext, labels: np.ndarray) -> np.ndarray:
    """data.kind: synthetic: the `data.synthetic.holdout` store rows (seeded, stratified by the teacher's
    label) that never train and make every choice instead of a real validation split; else none."""
    if ctx.config.data.real_choices:
        return np.zeros(0, dtype=np.int64)
    synthetic = ctx.config.data.synthetic
    return stratified_subsample(labels, synthetic.holdout, synthetic.seed)


def training_rows(ctx: RunContext, labels: np.ndarray) -> np.ndarray:
    return np.setdiff1d(np.arange(len(labels)), held_out_rows(ctx, labels))


def write_held_out(ctx: RunContext, store_path) -> dict:
    """data.kind: synthetic: data/val.npz from the held-out rows (x: the teacher's exact input, y: its argmax)
    and data/calib.npz as quantize.calibration's manifest says (split train: the training rows; val: the
    held-out ones). Returns what the report says of them."""
    from edgekd.config import needs_calibration
    from edgekd.data.calib import load_manifest, select
    from edgekd.pipeline.records import CALIB_FILE, VAL_FILE

    store = U8Store(store_path)
    split, held = _store_split(ctx, store, augment=False), held_out_rows(ctx, store.labels)
    (ctx.run_dir / VAL_FILE).parent.mkdir(parents=True, exist_ok=True)
    split.save_npz(ctx.run_dir / VAL_FILE, held, ui=ctx.ui, classes=np.array(ctx.data.classes))
    out = {"val_file": {"path": VAL_FILE, "samples": int(len(held)), "of": int(len(store.labels)),
                        "labels": "the teacher's argmax"}}
    if needs_calibration(ctx.config, ctx.targets):
        manifest = load_manifest(ctx.config.quantize.calibration)
        pool = training_rows(ctx, store.labels) if manifest.split == "train" else held
        rows = pool[select(store.labels[pool], manifest)]
        split.save_npz(ctx.run_dir / CALIB_FILE, rows, ui=ctx.ui, indices=rows)
        out["calibration"] = {"path": CALIB_FILE, "samples": int(len(rows)),
                              "from": "synthetic training images" if manifest.split == "train" else
                              "the held-out synthetic images", "manifest": str(ctx.config.quantize.calibration)}
    return out


def student_training(ctx: RunContext, real):
    """(training split, what the report says of it): `real` alone without data.synthetic; else the
    transfer set alone (synthetic_fraction 1) or both, `synthetic_fraction` of every batch synthetic."""
    synthetic_cfg, fraction = ctx.config.data.synthetic, ctx.config.distill.synthetic_fraction
    if synthetic_cfg is None:
        return real, None
    synthetic = synthetic_split(ctx)
    note = {"method": synthetic_cfg.method, "images": len(synthetic), "fraction_per_batch": fraction,
            "real_samples": 0 if fraction == 1 else len(real)}
    if not ctx.config.data.real_choices:  # as written (a stratified draw keeps every class: it may differ by a few)
        from edgekd.pipeline.synth_stage import transfer_summary

        note["held_out"] = transfer_summary(ctx)["held_out"]["val_file"]["samples"]
    if fraction == 1:
        return synthetic, note
    return MixedSplit(real, synthetic, fraction), note
