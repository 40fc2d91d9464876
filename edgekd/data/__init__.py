"""Datasets as preprocessed in-memory arrays, split deterministically.

`load_data(cfg, teacher_model)` returns `Data`: float32 N×C×H×W arrays already
resized and normalised exactly as the exported model expects its input, plus
the `Preprocess` record that travels with every artifact (ONNX metadata,
sidecars, bundles) so a device can reproduce it.

Arrays (rather than a lazy loader) keep the teacher cache and batched tensor
augmentation simple; they cost N×C×H×W×4 bytes (Fashion-MNIST at 32×32:
245 MB).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekd.config import DataConfig
from edgekd.data.sources import RawData, list_imagefolder, load_digits, load_idx
from edgekd.errors import DataError


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
    val_x: np.ndarray
    val_y: np.ndarray
    classes: list[str]
    preprocess: Preprocess
    source: str  # where the data came from, for the report

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Hash of the exact arrays: stage caches key on it, not on file dates."""
        h = hashlib.sha256()
        for arr in (self.train_x, self.train_y, self.val_x, self.val_y):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps([self.classes, self.preprocess.to_dict()]).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "source": self.source,
            "train": int(len(self.train_y)),
            "val": int(len(self.val_y)),
            "classes": self.classes,
            "preprocess": self.preprocess.to_dict(),
        }


def load_data(cfg: DataConfig, teacher_model: str | None = None) -> Data:
    if cfg.kind == "imagefolder":
        return _load_imagefolder(cfg, teacher_model)
    raw = load_digits(None) if cfg.kind == "digits" else load_idx(cfg.path)
    source = "scikit-learn digits" if cfg.kind == "digits" else f"idx:{cfg.path}"
    return _from_arrays(raw, cfg, source)


def _from_arrays(raw: RawData, cfg: DataConfig, source: str) -> Data:
    train_x, train_y, val_x, val_y = raw.train_x, raw.train_y, raw.test_x, raw.test_y
    if val_x is None:
        train_idx, val_idx = stratified_split(train_y, cfg.val_fraction, cfg.seed)
        train_x, val_x, val_y, train_y = train_x[train_idx], train_x[val_idx], train_y[val_idx], train_y[train_idx]
    train = _to_unit_nchw(train_x, raw.pixel_max, cfg)
    val = _to_unit_nchw(val_x, raw.pixel_max, cfg)
    mean = cfg.mean or tuple(float(m) for m in train.mean(axis=(0, 2, 3)))
    std = cfg.std or tuple(float(s) for s in train.std(axis=(0, 2, 3)))
    pre = Preprocess(cfg.input_size, cfg.channels, tuple(mean), tuple(std), "bilinear", 1.0, raw.pixel_max)
    return Data(_normalise(train, pre), train_y, _normalise(val, pre), val_y, raw.classes, pre, source)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shuffled split: same seed, same split, on every machine."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


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
    rows = np.sort(np.concatenate(kept))
    return StudentSplit(rows, np.isin(rows, np.concatenate(dropped)), len(labels))


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


def _load_imagefolder(cfg: DataConfig, teacher_model: str | None) -> Data:
    root = cfg.path
    if not root.is_dir():
        raise DataError(f"data.path {str(root)!r} is not a directory.", "Point it at the ImageFolder root.")
    pre = _imagefolder_preprocess(cfg, teacher_model)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_items, classes = list_imagefolder(root / "train")
        val_items, val_classes = list_imagefolder(root / "val")
        if val_classes != classes:
            raise DataError(f"{root}/train and {root}/val have different class folders.", "Make them match.")
    else:
        items, classes = list_imagefolder(root)
        labels = np.array([label for _, label in items])
        train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.seed)
        train_items, val_items = [items[i] for i in train_idx], [items[i] for i in val_idx]
    train_x, train_y = _read_images(train_items, pre)
    val_x, val_y = _read_images(val_items, pre)
    return Data(train_x, train_y, val_x, val_y, classes, pre, f"imagefolder:{root}")


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


def _read_images(items: list[tuple[Path, int]], pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([preprocess_image(path, pre) for path, _ in items])
    y = np.array([label for _, label in items], dtype=np.int64)
    return x, y


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
