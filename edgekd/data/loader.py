"""DataLoaders over SampleDataset / ShardDataset: workers, pinned memory, seeded order, rank shards.

    loader = make_loader(dataset, batch_size, train=True, seed=cfg.seed, device=device,
                         rank=dist.rank, world_size=dist.world_size)
    for epoch in range(start, epochs):
        for x, y, index in epoch_batches(loader, epoch): ...

The order of epoch e is torch.randperm(n) seeded with seed * 100_003 + e (what the in-memory
trainer draws), and each sample's augmentation is seeded from (seed, sample, e): an epoch is
a function of (seed, e) alone, whatever the worker count, so a run resumed at epoch e continues
exactly. Under torchrun each rank takes its stride of the same permutation, padded with its head
like DistributedSampler(drop_last=False), and decodes only its own samples.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler


def default_workers(local_world_size: int = 1) -> int:
    """The cores this process may use, shared between the ranks on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


class EpochSampler(Sampler):
    """Yields (sample, epoch) keys for this rank: a seeded permutation (shuffle) or 0..n-1.

    pad: repeat the head so every rank gets ceil(n / world) samples (training: equal step counts);
    without it each sample is visited once across ranks (evaluation)."""

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        self.n, self.seed, self.shuffle, self.rank, self.world, self.pad = n, seed, shuffle, rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        if self.world > 1 and self.pad and self.n:
            total = -(-self.n // self.world) * self.world
            order = order.repeat(-(-total // self.n))[:total]  # whole copies first: n may be below world
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter([(i, self.epoch) for i in self.order().tolist()])

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return -(-self.n // self.world) if self.pad else len(range(self.rank, self.n, self.world))


def make_loader(dataset, batch_size: int, *, train: bool, seed: int = 0, workers: int | None = None,
                device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                drop_last: bool = False, prefetch: int = 2) -> DataLoader:
    """A DataLoader for training (shuffled, padded rank shards) or evaluation (in order, strided).

    workers: decoding processes (None: this machine's cores shared by its ranks; 0: in this process).
    On CUDA batches come in pinned memory. `prefetch` batches wait per worker: memory in flight is
    workers x prefetch x one batch (2 x 2 x 38 MiB at 64 x 3 x 224 x 224), whatever the dataset size. Map-style datasets
    keep their workers across epochs; a ShardDataset (webdataset) restarts them each epoch so they
    see the new epoch's shard order."""
    workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if workers is None else workers
    iterable = isinstance(dataset, IterableDataset)
    if iterable:
        dataset.configure(rank=rank, world_size=world_size, shuffle=train)
    sampler = None if iterable else EpochSampler(len(dataset), seed=seed, shuffle=train, rank=rank,
                                                 world_size=world_size, pad=train)
    # own generator: iterating a DataLoader draws its worker base seed, and must not draw from the global one
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed),
                      pin_memory=torch.device(device).type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0 and not iterable, prefetch_factor=prefetch if workers else None)


def epoch_batches(loader: DataLoader, epoch: int):
    """Iterate `loader` as epoch `epoch` (its order and augmentation)."""
    target = loader.dataset if isinstance(loader.dataset, IterableDataset) else loader.sampler
    target.set_epoch(epoch)
    return iter(loader)
