"""Datasets, split deterministically, behind one interface (`train`, `val`, `test` splits).

`load_data(cfg, teacher_model, cache_root=..., device=...)` returns:
    Data        digits / idx: float32 N×C×H×W arrays, resized and normalised, in memory (small:
                Fashion-MNIST at 32×32 is 245 MB); each split a TensorSplit over them
    FolderData  imagefolder (edgekd.data.folderdata): the file list only; each split a StreamSplit whose
                samples DataLoader workers decode (or read from the uint8 cache) one at a time
Both carry the `Preprocess` record that travels with every artifact (ONNX metadata, sidecars,
bundles) so a device can reproduce it, and split batches come out the same way
(edgekd.data.splitset), so each stage is written once.

Three splits, each with one job: `train` fits weights; `val` makes every choice
(best epoch, early stopping, the online peer, the INT8 gate's search); `test` is
used for no choice and scores every accuracy the report shows. Where they come
from: an official held-out file or folder is the test split (idx: the t10k files;
imagefolder: ROOT/test); what a source lacks is carved, class-stratified and seeded
(`data.seed`), out of its training data (`carve`, edgekd.data.splits).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING
from edgekd.data.sources import RawData, load_digits, load_idx
from edgekd.errors import DataError

if TYPE_CHECKING:  # edgekd.config imports edgekd.data.transforms, which imports this package
    from edgekd.config import DataConfig


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become the model's input. Recorded with every artifact."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0  # resize the short side to input_size / crop_pct, then centre-crop
    pixel_max: float = 255.0  # raw value of white; inputs are scaled to [0, 1] first

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Data:
    train_x: np.ndarray  # (N, C, H, W) float32, normalised
    train_y: np.ndarray  # (N,) int64
    val_x: np.ndarray  # validation: every choice is made on it
    val_y: np.ndarray
    test_x: np.ndarray  # test: used for no choice; every reported accuracy
    test_y: np.ndarray
    classes: list[str]
    preprocess: Preprocess
    source: str  # where the data came from, for the report
    origin: dict = field(default_factory=dict)  # split -> where it came from ("official test file", "carved from train")
    workers: int | None = None  # data.workers: processes drawing train.augment views (None: this machine's cores)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def train(self):
        from edgekd.data.splitset import TensorSplit

        return TensorSplit(self.train_x, self.train_y, workers=self.workers)  # views of the arrays: no copy

    @property
    def val(self):
        from edgekd.data.splitset import TensorSplit

        return TensorSplit(self.val_x, self.val_y)

    @property
    def test(self):
        from edgekd.data.splitset import TensorSplit

        return TensorSplit(self.test_x, self.test_y)

    def check(self, ui=None) -> None:
        """Nothing to check: the arrays were read whole (FolderData decodes every image here)."""

    def fingerprint(self) -> str:
        """Hash of the exact arrays: stage caches key on it, not on file dates."""
        h = hashlib.sha256()
        for arr in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps([self.classes, self.preprocess.to_dict()]).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "source": self.source,
            "splits": {"train": int(len(self.train_y)), "val": int(len(self.val_y)), "test": int(len(self.test_y))},
            "split_origin": self.origin,
            "classes": self.classes,
            "preprocess": self.preprocess.to_dict(),
        }


def load_data(cfg: DataConfig, teacher_model: str | None = None, *, cache_root: Path | None = None,
              device="cpu", skipped: list[str] = (), ui=None):
    """Data (digits, idx) or FolderData (imagefolder: `cache_root` holds its uint8 cache unless
    data.cache_dir names one; `skipped`: files the data stage found bad, left out with on_bad_image: skip;
    `ui`: listing progress with rate and ETA)."""
    if cfg.kind in STREAMED_KINDS:
        from edgekd.data.folderdata import FolderData

        if cfg.kind == "imagefolder" and not cfg.path.is_dir():
            raise DataError(f"data.path {str(cfg.path)!r} is not a directory.", "Point it at the ImageFolder root.")
        root = cfg.cache_dir or cache_root or Path(".edgekd-cache")
        return FolderData(cfg, _imagefolder_preprocess(cfg, teacher_model), cache_root=root, device=device,
                          skipped=skipped, ui=ui)
    raw = load_digits(None) if cfg.kind == "digits" else load_idx(cfg.path)
    source = "scikit-learn digits" if cfg.kind == "digits" else f"idx:{cfg.path}"
    return _from_arrays(raw, cfg, source)


def _from_arrays(raw: RawData, cfg: DataConfig, source: str) -> Data:
    has_test = raw.test_x is not None
    train_idx, val_idx, test_idx = carve(raw.train_y, cfg.val_fraction, 0.0 if has_test else cfg.test_fraction, cfg.seed)
    test_x, test_y = (raw.test_x, raw.test_y) if has_test else (raw.train_x[test_idx], raw.train_y[test_idx])
    train = _to_unit_nchw(raw.train_x[train_idx], raw.pixel_max, cfg)
    mean = cfg.mean or tuple(float(m) for m in train.mean(axis=(0, 2, 3)))
    std = cfg.std or tuple(float(s) for s in train.std(axis=(0, 2, 3)))
    pre = Preprocess(cfg.input_size, cfg.channels, tuple(mean), tuple(std), "bilinear", 1.0, raw.pixel_max)

    def ready(images: np.ndarray) -> np.ndarray:
        return _normalise(_to_unit_nchw(images, raw.pixel_max, cfg), pre)

    origin = {"val": CARVED, "test": "the source's own test files" if has_test else CARVED}
    return Data(_normalise(train, pre), raw.train_y[train_idx], ready(raw.train_x[val_idx]), raw.train_y[val_idx],
                ready(test_x), np.asarray(test_y, dtype=np.int64), raw.classes, pre, source, origin, cfg.workers)


STREAMED_KINDS = ("imagefolder", "webdataset")  # read per sample from files (FolderData); the others in memory
CARVED = "carved from the training data (stratified, data.seed)"


def carve(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices into `labels`: the streaming layer's rule
    (edgekd.data.splits.three_way_split), so both layers split a dataset the same way.
    A fraction of 0 carves nothing (the source has that split)."""
    from edgekd.data.splits import three_way_split

    return tuple(three_way_split(labels, val_fraction, test_fraction, seed))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: `carve` without a test split."""
    train, val, _ = carve(labels, val_fraction, 0.0, seed)
    return train, val


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of about `n` samples keeping every class's share (largest remainder;
    every class keeps at least one sample); all of them when n >= len(labels)."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.maximum(1, np.floor(quota)).astype(int)
    for i in np.argsort(-(quota - np.floor(quota)))[: max(0, n - int(take.sum()))]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picks))


@dataclass(frozen=True)
class StudentSplit:
    """What the student stage trains on: `rows` index the training split (sorted); `unlabeled`
    marks, per row, a sample used without its label."""

    rows: np.ndarray
    unlabeled: np.ndarray  # bool, len(rows)
    of: int  # size of the whole training split

    @property
    def unlabeled_rows(self) -> np.ndarray:
        return self.rows[self.unlabeled]

    def summary(self) -> dict:
        n, k = len(self.rows), int(self.unlabeled.sum())
        return {"train_split": self.of, "samples": n, "labeled": n - k, "unlabeled": k}


def student_split(labels: np.ndarray, train_fraction: float, unlabeled_fraction: float, seed: int) -> StudentSplit:
    """Seeded, class-stratified: first `train_fraction` of each class (at least one sample), then
    `unlabeled_fraction` of that share left without labels (each class keeps at least one label).
    The two draws use their own streams of `seed`, so changing one fraction never reshuffles the other."""
    kept, dropped = [], []
    subset_rng, unlabeled_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if train_fraction < 1:
            idx = np.sort(subset_rng.permutation(idx)[: max(1, int(round(len(idx) * train_fraction)))])
        kept.append(idx)
        n_unlabeled = min(len(idx) - 1, int(round(len(idx) * unlabeled_fraction)))
        dropped.append(unlabeled_rng.permutation(idx)[:n_unlabeled])
    none = [np.zeros(0, np.int64)]  # no training split (data.kind: synthetic): no rows
    rows = np.sort(np.concatenate(kept or none))
    return StudentSplit(rows, np.isin(rows, np.concatenate(dropped or none)), len(labels))


def _to_unit_nchw(images: np.ndarray, pixel_max: float, cfg: DataConfig) -> np.ndarray:
    """N×H×W or N×H×W×C raw pixels -> N×C×S×S float32 in [0, 1], resized bilinearly."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / pixel_max)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = _match_channels(x, cfg.channels)
    if x.shape[-1] != cfg.input_size or x.shape[-2] != cfg.input_size:
        x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False)
    return x.contiguous().numpy()


def _match_channels(x, channels: int):
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        return (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise DataError(f"Cannot turn {x.shape[1]}-channel images into {channels}.", "Set data.channels to 1 or 3.")


def _normalise(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def _imagefolder_preprocess(cfg: DataConfig, teacher_model: str | None) -> Preprocess:
    """Take mean/std/interpolation/crop from the teacher's timm pretrained config."""
    mean, std, interpolation, crop_pct = (0.5,) * cfg.channels, (0.5,) * cfg.channels, "bilinear", 1.0
    if teacher_model:
        import timm

        pcfg = timm.models.get_pretrained_cfg(teacher_model)
        if pcfg is not None:
            if cfg.channels == len(pcfg.mean):
                mean, std = tuple(pcfg.mean), tuple(pcfg.std)
            interpolation, crop_pct = pcfg.interpolation or "bilinear", pcfg.crop_pct or 1.0
    return Preprocess(cfg.input_size, cfg.channels, tuple(cfg.mean or mean), tuple(cfg.std or std), interpolation, crop_pct, 255.0)


def preprocess_image(path: Path, pre: Preprocess) -> np.ndarray:
    """One image file -> C×S×S float32, as timm's eval transform does it."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img = img.convert("L" if pre.channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:  # bomb: > 2x PIL's pixel limit
        raise DataError(f"Cannot read image {path}: {exc}.", "Remove or replace the file.") from None
    scale = pre.input_size / pre.crop_pct
    w, h = img.size
    ratio = scale / min(w, h)
    resample = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST}.get(pre.interpolation, Image.BILINEAR)
    img = img.resize((max(pre.input_size, round(w * ratio)), max(pre.input_size, round(h * ratio))), resample)
    w, h = img.size
    left, top = (w - pre.input_size) // 2, (h - pre.input_size) // 2
    img = img.crop((left, top, left + pre.input_size, top + pre.input_size))
    arr = np.asarray(img, dtype=np.float32) / pre.pixel_max
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    return ((arr - mean) / std).astype(np.float32)
