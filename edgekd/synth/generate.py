"""Transfer images on disk: generate in batches, cache by key, resume after an interruption.

`generate_transfer_set` is the one entry point. The store it writes (the data layer's
"edgekd.u8store/1" format: edgekd.data.u8store, docs/data.md) is
named `<method>-<key[:16]>` under `cache_dir`, where the key hashes everything the images
depend on: the teacher's weights, the method and every one of its settings, the seed, the
count, the image shape and normalisation, the student's weights when the method reads the
student, and ALGORITHM_VERSION. A complete store with that key is reused untouched; a
`.partial` one is continued from its last written batch (DeepInversion batches are seeded per
batch; the adversarial generator's training state is saved with every batch as
`state-<batch>.pt` inside the `.partial` folder, named by the writer's checkpoint), so an
interrupted generation ends with the same images an uninterrupted one would have written.

Only one batch is in memory at a time. Images are stored as uint8 after de-normalising with
the teacher's mean/std; labels are the teacher's argmax on the stored (quantised) images.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from edgekd.artifacts import versions
from edgekd.data.u8store import FORMAT, U8Store, U8Writer
from edgekd.errors import ConfigError
from edgekd.synth.adversarial import AdversarialSource
from edgekd.synth.deepinversion import DeepInversionSource
from edgekd.synth.settings import SynthSettings
from edgekd.synth.tensors import from_uint8, num_classes, teacher_labels, to_uint8, weights_sha256

ALGORITHM_VERSION = 1  # bump when a method's code changes what it generates: old caches stop matching


def _deepinversion(teacher, settings, shape, mean, std, seed, count, student):
    return DeepInversionSource(teacher, settings, shape, mean, std, seed, student)


def _adversarial(teacher, settings, shape, mean, std, seed, count, student):
    return AdversarialSource(teacher, settings, shape, seed, count, student)


METHODS = {
    "deepinversion": _deepinversion,
    "deepinversion_imagenet": _deepinversion,
    "zskt": _adversarial,
    "dafl": _adversarial,
}


@dataclass
class TransferSet:
    path: Path  # the complete store: `open()` it, or edgekd.data.u8store.U8Store(path)
    count: int
    key: str
    reused: bool  # found complete in the cache: nothing was generated
    resumed_from: int = 0  # images already on disk from an interrupted run
    seconds: float = 0.0  # this call's generation time
    index: dict = field(default_factory=dict)  # the store's index.json

    def open(self) -> U8Store:
        """The store: `.read(i)` -> (C, H, W) uint8, `.labels` (N,) int64 teacher labels, `.index`."""
        return U8Store(self.path)

    def summary(self) -> dict:
        """What a report states: method, count, how it was obtained."""
        return {"path": str(self.path), "count": self.count, "key": self.key, "reused": self.reused,
                "resumed_from": self.resumed_from, "seconds": round(self.seconds, 1),
                "method": self.index.get("method"), "label_counts": self.index.get("label_counts")}


def cache_key(teacher: nn.Module, settings: SynthSettings, *, count: int, seed: int, shape: tuple[int, int, int],
              mean, std, student: nn.Module | None = None) -> str:
    """sha256 of what the images depend on. `student` only when the method reads it."""
    return _key(_identity(teacher, settings, count, seed, shape, mean, std, student))


def _identity(teacher, settings, count, seed, shape, mean, std, student) -> dict:
    return {"version": ALGORITHM_VERSION, "format": FORMAT, "settings": settings.model_dump(mode="json"),
            "count": int(count), "seed": int(seed), "shape": [int(s) for s in shape],
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "teacher": weights_sha256(teacher),
            "student": None if student is None else [type(student).__name__, weights_sha256(student)]}


def _key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def generate_transfer_set(teacher: nn.Module, settings: SynthSettings, *, count: int, shape: tuple[int, int, int],
                          mean, std, cache_dir: str | Path, seed: int = 0, student: nn.Module | None = None,
                          ui=None) -> TransferSet:
    """`count` transfer images for `teacher` (its input `shape` (C, H, W) and normalisation
    `mean`/`std`), made by `settings.method`; a store under `cache_dir`. `student`: the model the
    images will teach (read by zskt and by DeepInversion's competition term; never modified)."""
    if count < 1:
        raise ConfigError(f"The transfer set needs at least one image, {count} were asked.", "Set count >= 1.")
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise ConfigError(f"mean/std have {len(mean)}/{len(std)} values for {shape[0]}-channel images.",
                          "Pass the teacher's per-channel normalisation.")
    started = time.perf_counter()
    source = METHODS[settings.method](teacher, settings, tuple(shape), mean, std, seed, count, student)
    try:
        identity = _identity(teacher, settings, count, seed, shape, mean, std,
                             student if source.uses_student else None)
        key = _key(identity)
        path = Path(cache_dir) / f"{settings.method}-{key[:16]}"
        if (path / "index.json").is_file():  # complete (a store is renamed into place when whole)
            index = U8Store(path).index
            return TransferSet(path, index["count"], key, reused=True, index=index)
        store, resumed_from = _write(path, identity, key, source, teacher, ui, started)
    finally:
        source.close()
    return TransferSet(store.path, count, key, reused=False, resumed_from=resumed_from,
                       seconds=time.perf_counter() - started, index=store.index)


def _write(path: Path, identity: dict, key: str, source, teacher: nn.Module, ui, started: float
           ) -> tuple[U8Store, int]:
    """Write (or continue) the store at `path`; returns it and the images found from an earlier run."""
    shape, mean, std = tuple(identity["shape"]), identity["mean"], identity["std"]
    writer = U8Writer(path, shape, key=key)
    try:
        resumed_from = writer.records
        _resume_source(writer, source)
        _fill(writer, source, teacher, identity["count"], mean, std, ui, identity["settings"]["method"])
        _drop_states(writer.partial, keep=None)
        provenance = _provenance(identity, key, writer.labels(), num_classes(teacher, shape),
                                 time.perf_counter() - started)
        return writer.finish(**provenance), resumed_from
    finally:
        writer.close()


def _resume_source(writer: U8Writer, source) -> None:
    """Bring a stateful source to the writer's last checkpoint (its state file), drop any other."""
    state = writer.resumed.get("state")
    _drop_states(writer.partial, keep=state)
    if state is not None:
        source.load(writer.partial / state)


def _fill(writer: U8Writer, source, teacher: nn.Module, count: int, mean, std, ui, method: str) -> None:
    """Append batches until the store holds `count` images; each batch is checkpointed (with the
    source's state, if it has one) before the next is made."""
    from edgekd.ui import UI

    ui = ui or UI(quiet=True)
    batch = int(writer.resumed.get("batches", 0))
    if writer.records:
        ui.info(f"{method}: resuming, {writer.records} of {count} transfer images already on disk")
    with ui.progress(f"{method} transfer images", count) as advance:
        if writer.records:
            advance(writer.records)
        while writer.records < count:
            images = source.next_batch(batch)[: count - writer.records]  # (n, C, H, W), normalised
            pixels = to_uint8(images, mean, std)
            labels = teacher_labels(teacher, from_uint8(pixels, mean, std))  # what the stored images show it
            for image, label in zip(pixels, labels):
                writer.append(image, int(label))
            batch += 1
            state = _save_state(writer.partial, source, batch)
            writer.checkpoint(batches=batch, state=state)  # the batch and its state become current together
            _drop_states(writer.partial, keep=state)
            advance(len(pixels), **{k: round(v, 4) for k, v in source.losses.items()})


def _save_state(folder: Path, source, batch: int) -> str | None:
    if not source.stateful:
        return None
    name = f"state-{batch:06d}.pt"
    source.save(folder / name)
    return name


def _drop_states(folder: Path, keep: str | None) -> None:
    """Remove source checkpoints other than the committed one (superseded, or made for a lost batch)."""
    for file in folder.glob("state-*"):
        if file.name != keep:
            file.unlink()


def _provenance(identity: dict, key: str, labels: np.ndarray, classes: int, seconds: float) -> dict:
    """index.json's fields beyond the format's own: how the images were made."""
    counts = np.bincount(labels[labels >= 0], minlength=classes).tolist()
    return {"source": "synthetic", "method": identity["settings"]["method"], "settings": identity["settings"],
            "seed": identity["seed"], "key": key, "mean": identity["mean"], "std": identity["std"],
            "teacher_sha256": identity["teacher"], "student": identity["student"],
            "labels": "teacher argmax on the stored images", "label_counts": counts,
            "seconds_last_run": round(seconds, 1), "algorithm_version": ALGORITHM_VERSION, "versions": versions()}
