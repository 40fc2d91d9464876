"""One split as the trainers see it: labels, and batches of (index, inputs, labels) per epoch.

Two kinds behind the same interface, so every stage is written once:
    TensorSplit    digits / idx: small, preprocessed tensors in memory (Fashion-MNIST at 32 px: 245 MB)
    StreamSplit    imagefolder: a SampleDataset read per sample by DataLoader workers (files or the
                   uint8 cache); nothing but the file list stays in memory

    batches = split.batches(batch_size, shuffle=True, seed=seed, augment="crop_flip", rank=r, world_size=w)
    for epoch in ...:
        for idx, x, y in batches.epoch(epoch): ...   # idx: rows of this split (teacher caches index by it)

Training order: epoch e is torch.randperm(n) seeded with seed * 100_003 + e (EpochSampler), each rank
its stride, padded so every rank takes as many steps. Evaluation: in order, rank r takes rows r, r + w,
... (edgekd.distill.distributed.Dist.gather_strided undoes it). `augment` crop / crop_flip is the
batched, seeded 4-px shift and flip of the preprocessed inputs, drawn from a generator seeded per epoch;
timm (StreamSplit only) reads training samples through the split's `augmented` dataset instead: timm's
transform of the picture, run in the workers, seeded per (seed, sample, epoch).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.errors import DataError

EVAL_BATCH_BYTES = 64 * 2**20  # one evaluation batch of inputs: 111 images at 3 x 224 x 224 float32
EVAL_BATCH_MAX = 256


def eval_batch_size(sample_shape) -> int:
    """Batch for inference passes sized by memory, not a fixed count (64 MiB of float32 inputs, at most 256)."""
    per_sample = 4 * int(np.prod(sample_shape))
    return max(1, min(EVAL_BATCH_MAX, EVAL_BATCH_BYTES // per_sample))


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """Batched, seeded augmentation: random 4-px-padded crop, optional horizontal flip."""
    if augment == "none":
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(-1, x.shape[1], -1, w + 8)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(-1, x.shape[1], h, -1)
    out = out.gather(3, cols)
    if augment == "crop_flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def _augment_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch + 1)


def _order(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    from edgekd.data.loader import EpochSampler

    sampler = EpochSampler(n, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size, pad=shuffle)
    sampler.set_epoch(epoch)
    return sampler.order()


class Batches:
    """What a training or evaluation pass iterates: `epoch(e)` -> (idx, x, y) batches; `wait_seconds`
    accumulates the time the caller spent waiting for a batch (the data-wait share of a step)."""

    def __init__(self, make_epoch, samples: int):
        self._make_epoch, self.samples, self.wait_seconds = make_epoch, samples, 0.0

    def __len__(self) -> int:
        return self.samples  # this rank's samples per epoch

    def epoch(self, epoch: int = 0):
        it = iter(self._make_epoch(epoch))
        while True:
            started = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_seconds += time.perf_counter() - started
            yield batch


class TensorSplit:
    """A split held as preprocessed tensors: x (N, C, S, S) float32, y (N,) int64."""

    def __init__(self, x, y, *, workers: int | None = None):
        self.x = torch.as_tensor(x)
        self.y = torch.as_tensor(y)
        self.workers = workers  # for per-sample views (`batches(transform=...)`); None: this machine's cores

    @property
    def labels(self) -> np.ndarray:
        return self.y.numpy()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def take(self, rows: np.ndarray, labels: np.ndarray | None = None) -> "TensorSplit":
        """Rows of this split (a copy: the callers take bounded shares or the student's rows)."""
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        y = self.y[rows] if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64))
        return TensorSplit(self.x[rows], y, workers=self.workers)

    def stack(self, rows: np.ndarray) -> np.ndarray:
        """Inputs of `rows` as one array (bounded subsets only: calibration, parity samples)."""
        return self.x[torch.as_tensor(np.asarray(rows, dtype=np.int64))].numpy()

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, augment: str = "none", rank: int = 0,
                world_size: int = 1, transform=None, views: int | None = None, **_) -> Batches:
        """`transform`: a random per-sample view (C, H, W) -> (C, H, W), drawn in DataLoader workers and
        seeded per (seed, sample, epoch [mod views]) (edgekd.data.datasets); it replaces `augment`."""
        if transform is not None and shuffle:
            from edgekd.data.datasets import SampleDataset

            dataset = SampleDataset(_TensorSource(self.x, self.y), transform, seed=seed, views=views)
            return loader_batches(dataset, batch_size, seed=seed, workers=self.workers, rank=rank,
                                  world_size=world_size)

        def one_epoch(epoch: int):
            order = _order(len(self), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
            generator = _augment_generator(seed, epoch)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                x = augment_batch(self.x[idx], augment, generator) if shuffle else self.x[idx]
                yield idx, x, self.y[idx]

        count = len(_order(len(self), shuffle=shuffle, seed=seed, epoch=0, rank=rank, world_size=world_size))
        return Batches(one_epoch, count)

    def save_npz(self, path, rows: np.ndarray, *, ui=None, **extra) -> int:
        rows = np.asarray(rows, dtype=np.int64)
        np.savez(path, x=self.stack(rows), y=self.labels[rows], **extra)
        return len(rows)


class _TensorSource:
    """In-memory samples as a SampleDataset source: forked workers share the tensors, nothing is copied."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.labels = x, y.numpy()

    def load(self, i: int) -> torch.Tensor:
        return self.x[i]


class Then:
    """`then(first(sample))`: a split's own sample transform followed by a training view (random)."""

    deterministic = False

    def __init__(self, first, then):
        self.first, self.then = first, then

    def __call__(self, sample):
        return self.then(self.first(sample))


def loader_batches(dataset, batch_size: int, *, seed: int, workers: int | None, device="cpu", rank: int = 0,
                   world_size: int = 1) -> Batches:
    """Shuffled training batches (idx, x, y) of a keyed dataset, read by DataLoader workers (edgekd.data.loader)."""
    from edgekd.data.loader import epoch_batches, make_loader

    loader = make_loader(dataset, batch_size, train=True, seed=seed, workers=workers, device=device, rank=rank,
                         world_size=world_size)

    def one_epoch(epoch: int):
        for x, y, idx in epoch_batches(loader, epoch):
            yield idx, x, y

    return Batches(one_epoch, len(loader.sampler))


class _Rows(torch.utils.data.Dataset):
    """`dataset` seen through `rows` (with their labels): key (j, epoch) -> (x, labels[j], j)."""

    def __init__(self, dataset, rows: np.ndarray, labels: np.ndarray):
        self.dataset, self.rows, self.labels = dataset, rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        j, epoch = key if isinstance(key, tuple) else (key, 0)
        x, _, _ = self.dataset[(int(self.rows[j]), epoch)]
        return x, int(self.labels[j]), int(j)


class StreamSplit:
    """A split read per sample: `dataset` is a SampleDataset (files or the uint8 cache, eval transform);
    `rows` the rows of it this split holds, `labels` their labels (-1: used without its label)."""

    def __init__(self, dataset, *, workers: int | None, device="cpu", rows: np.ndarray | None = None,
                 labels: np.ndarray | None = None, augmented=None):
        self.dataset, self.workers, self.device, self.augmented = dataset, workers, device, augmented
        self.rows = np.arange(len(dataset), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self._labels = np.asarray(dataset.labels[self.rows] if labels is None else labels, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset[0][0].shape)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: np.ndarray, labels: np.ndarray | None = None) -> "StreamSplit":
        rows = np.asarray(rows, dtype=np.int64)
        return StreamSplit(self.dataset, workers=self.workers, device=self.device, rows=self.rows[rows],
                           labels=self.labels[rows] if labels is None else labels, augmented=self.augmented)

    def stack(self, rows: np.ndarray) -> np.ndarray:
        """Inputs of `rows` as one array, decoded in order (bounded subsets only)."""
        part = self.take(rows)
        batches = part.batches(eval_batch_size(self.sample_shape), shuffle=False)
        return torch.cat([x for _, x, _ in batches.epoch()]).numpy()

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, augment: str = "none", rank: int = 0,
                world_size: int = 1, workers: int | None = None, transform=None, views: int | None = None) -> Batches:
        """The loader lives as long as the returned Batches: its workers persist across epochs.

        `transform`: a random per-sample view of the tensor the split's transform made (the eval
        transform, or timm's with augment 'timm'), drawn in the same worker under the same seed
        (seed, sample, epoch [mod views]); with it, augment crop/crop_flip does not apply."""
        from edgekd.data.loader import epoch_batches, make_loader

        dataset, in_batch = self.dataset, shuffle and augment in ("crop", "crop_flip") and transform is None
        if shuffle and augment == "timm":
            if self.augmented is None:
                raise DataError("augment 'timm' needs the split's training transform.", "This is a bug: report it.")
            dataset = self.augmented
        if shuffle and (augment == "timm" or transform is not None):
            dataset = copy.copy(dataset)
            if transform is not None:
                dataset.transform, dataset.random = Then(dataset.transform, transform), True
            dataset.seed, dataset.views = seed, views  # each sample's view: (seed, sample, epoch), whatever the worker
        loader = make_loader(_Rows(dataset, self.rows, self.labels), batch_size, train=shuffle, seed=seed,
                             workers=self.workers if workers is None else workers, device=self.device, rank=rank,
                             world_size=world_size)

        def one_epoch(epoch: int):
            generator = _augment_generator(seed, epoch)
            for x, y, idx in epoch_batches(loader, epoch):
                yield idx, augment_batch(x, augment, generator) if in_batch else x, y

        return Batches(one_epoch, len(loader.sampler))

    def save_npz(self, path, rows: np.ndarray, *, ui=None, **extra) -> int:
        """dataset[rows] streamed into an .npz (x, y, rows, extra) without holding it whole; `ui`: a
        progress bar with rate and ETA."""
        from edgekd.data.subsets import write_subset

        rows = np.asarray(rows, dtype=np.int64)
        part = self.take(rows)
        view = _Rows(self.dataset, part.rows, part.labels)
        return write_subset(view, np.arange(len(rows)), path, workers=self.workers,
                            batch_size=eval_batch_size(self.sample_shape), ui=ui,
                            extra={k: np.asarray(v) for k, v in extra.items()})
