"""One dataset interface over every source: `SampleDataset(source, transform)[key]` ->
(image tensor C x S x S float32, label int, sample index int).

A source says how to read sample i, a transform what to make of it:
    FileSource(files)      ImageFolder files, decoded in the DataLoader worker (PIL image)
    U8Source(store)        the decoded uint8 cache / any u8 store, read per record (PIL image)
    ArraySource(images)    built-in small arrays (digits, idx) kept in memory (tensor in [0, 1])
Webdataset shards stream instead (edgekd.data.shards.ShardDataset, same items).

key: an int, or (int, epoch) as EpochSampler yields it in training. A random transform runs
with the global generators seeded from (seed, sample, epoch), or (seed, sample, epoch mod
views) with `views` = K: the view is the same in any worker, process or resumed run, and a
teacher-output cache can hold K views per image and replay them (`augmented_view`).
"""

from __future__ import annotations

import numpy as np
import torch

from edgekd.data.decode import BAD_IMAGE_ERRORS, describe, load_image
from edgekd.data.listing import FileList
from edgekd.data.seeding import derive_seed, fork_rngs, view_key
from edgekd.data.u8store import U8Store
from edgekd.errors import DataError


class SampleDataset(torch.utils.data.Dataset):
    def __init__(self, source, transform, *, seed: int = 0, views: int | None = None):
        self.source, self.transform, self.seed, self.views = source, transform, seed, views
        self.random = not getattr(transform, "deterministic", False)

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels

    def __len__(self) -> int:
        return len(self.source.labels)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        x = transform_sample(self.transform, self.source.load(int(i)), self.random, (self.seed, int(i), int(epoch)),
                             self.views)
        return x, int(self.source.labels[i]), int(i)


def transform_sample(transform, image, random: bool, key: tuple[int, int, int], views: int | None):
    """`transform(image)`, with the generators seeded from key = (seed, sample, epoch) when it is random."""
    if not random:
        return transform(image)
    with fork_rngs(derive_seed(*view_key(*key, views))):
        return transform(image)


def augmented_view(dataset: SampleDataset, sample: int, epoch: int) -> torch.Tensor:
    """The tensor training shows for `sample` in `epoch` (view epoch mod K with views=K)."""
    return dataset[(sample, epoch)][0]


class FileSource:
    """Files of a FileList, decoded with draft mode down to `short_side` (None: full decode)."""

    def __init__(self, files: FileList, channels: int, short_side: int | None):
        self.files, self.channels, self.short_side = files, channels, short_side
        self.labels = files.labels

    def load(self, i: int):
        path = self.files.path(i)
        try:
            return load_image(path, self.channels, self.short_side)
        except BAD_IMAGE_ERRORS as exc:
            raise DataError(f"Cannot read image {path}: {describe(exc)}.",
                            "It changed or broke after the dataset was checked: replace or remove it.") from None


class U8Source:
    """Records of a u8 store as PIL images (L or RGB)."""

    def __init__(self, store: U8Store):
        self.store, self.labels = store, store.labels

    def load(self, i: int):
        from PIL import Image

        record = self.store.read(i)  # (C, H, W)
        return Image.fromarray(record[0] if record.shape[0] == 1 else record.transpose(1, 2, 0))


class ArraySource:
    """Raw (N, H, W) or (N, H, W, 3) arrays; sample i is images[rows[i]] as C x S x S float32 in [0, 1],
    converted and resized exactly as the in-memory layer (edgekd.data._to_unit_nchw) does it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, pixel_max: float, channels: int,
                 input_size: int, rows: np.ndarray | None = None):
        self.images, self.pixel_max, self.channels, self.size = images, pixel_max, channels, input_size
        self.rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)[self.rows]

    def load(self, i: int) -> torch.Tensor:
        return self.batch(np.array([i]))[0]

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        """Samples idx as (n, C, S, S): one interpolate call per chunk (channel_stats streams with it)."""
        import torch.nn.functional as F

        from edgekd.data import _match_channels

        x = torch.from_numpy(np.asarray(self.images[self.rows[idx]], dtype=np.float32) / self.pixel_max)
        x = _match_channels(x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2), self.channels)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x.contiguous()


def channel_stats(source: ArraySource, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of the source's samples, streamed in chunks: the data
    normalisation of digits/idx without holding the resized split."""
    total = total_sq = 0.0
    count = 0
    for start in range(0, len(source.labels), chunk):
        x = source.batch(np.arange(start, min(start + chunk, len(source.labels)))).double()
        total = total + x.sum(dim=(0, 2, 3))
        total_sq = total_sq + (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
