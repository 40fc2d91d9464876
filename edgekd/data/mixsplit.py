"""Real and synthetic samples in every training batch, by share (`distill.synthetic_fraction`).

Mixing by count lets a large synthetic set swamp a small real one (docs/data_free.md: 8,192
generated images beside 1,650 real ones made 83% of every batch synthetic, and the student
worse). So each training batch of B samples takes round(B * fraction) synthetic samples and the
rest real: an epoch is one pass over the real split, and the synthetic split is walked in its
own seeded order, continuing into its next pass when it runs out (a pass of the mixed split
never repeats a synthetic sample before all were shown, and a resumed epoch draws the same).

The two splits are any of edgekd.data.splitset's (TensorSplit, StreamSplit): each keeps its own
loader, workers and in-batch augmentation. Batch indices of synthetic samples are offset by the
real split's length (rows of the concatenation `labels` describes).
"""

from __future__ import annotations

import numpy as np
import torch

from edgekd.data.splitset import Batches

SYNTHETIC_PASSES = 1_000  # synthetic pass numbers per mixed epoch: epoch e uses passes e*1000, e*1000+1, ...


def batch_shares(batch_size: int, fraction: float) -> tuple[int, int]:
    """(real, synthetic) samples of a full batch: at least one of each while fraction < 1."""
    synthetic = min(batch_size - 1, max(1, round(batch_size * fraction)))
    return batch_size - synthetic, synthetic


class MixedSplit:
    def __init__(self, real, synthetic, fraction: float):
        if not 0 < fraction < 1:
            raise ValueError(f"a mixed split needs 0 < fraction < 1, got {fraction}")  # callers use the split alone
        self.real, self.synthetic, self.fraction = real, synthetic, fraction

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([self.real.labels, self.synthetic.labels])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.real.sample_shape

    def __len__(self) -> int:
        return len(self.real) + len(self.synthetic)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, augment: str = "none", rank: int = 0,
                world_size: int = 1, transform=None, views: int | None = None) -> Batches:
        """`transform` (train.augment's per-sample views) applies to real and synthetic samples alike, each
        split drawing them in its own workers. `views` (a replay cache's K) is refused: its rows are real
        training images, and a mixed epoch walks the synthetic split in passes of its own."""
        if views:
            raise ValueError("a mixed real + synthetic split has no replayable views (views=None); the config "
                             "refuses distill.replay_views with data.synthetic")
        n_real, n_synthetic = batch_shares(batch_size, self.fraction)
        real = self.real.batches(n_real, shuffle=shuffle, seed=seed, augment=augment, rank=rank,
                                 world_size=world_size, transform=transform)
        synthetic = self.synthetic.batches(n_synthetic, shuffle=shuffle, seed=seed + 1, augment=augment, rank=rank,
                                           world_size=world_size, transform=transform)
        offset = len(self.real)

        def one_epoch(epoch: int):
            drawn = _Stream(_endless(synthetic, epoch * SYNTHETIC_PASSES))
            for idx, x, y in real.epoch(epoch):
                want = n_synthetic if len(idx) == n_real else max(1, round(len(idx) * n_synthetic / n_real))
                s_idx, s_x, s_y = drawn.take(want)
                yield (torch.cat([torch.as_tensor(idx), s_idx + offset]), torch.cat([x, s_x.to(x.device)]),
                       torch.cat([torch.as_tensor(y), s_y.to(torch.as_tensor(y).device)]))

        samples = len(real) + round(len(real) * n_synthetic / n_real)
        return Batches(one_epoch, samples)


def _endless(batches: Batches, first_pass: int):
    """The synthetic split's batches, pass after pass, each pass in its own seeded order."""
    p = first_pass
    while True:
        for idx, x, y in batches.epoch(p):
            yield torch.as_tensor(idx), x, torch.as_tensor(y)
        p += 1


class _Stream:
    """`take(n)` samples from an endless batch stream, joining or splitting its batches (nothing skipped)."""

    def __init__(self, batches):
        self.batches, self.left = batches, None

    def take(self, want: int):
        parts = [self.left] if self.left is not None else []
        have = sum(len(p[0]) for p in parts)
        while have < want:
            parts.append(next(self.batches))
            have += len(parts[-1][0])
        idx, x, y = (torch.cat(p) for p in zip(*parts))
        self.left = (idx[want:], x[want:], y[want:]) if have > want else None
        return idx[:want], x[:want], y[:want]
