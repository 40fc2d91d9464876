"""distill.synthetic_fraction: the share of synthetic samples in every batch, not by count."""

import numpy as np
import pytest
import torch

from edgekd.data.mixsplit import MixedSplit, batch_shares
from edgekd.data.splitset import TensorSplit


def _splits(n_real=40, n_synthetic=300):
    # real samples are 0-images with their labels, synthetic ones 1-images with withheld labels (-1)
    real = TensorSplit(torch.zeros(n_real, 1, 4, 4), torch.arange(n_real) % 3)
    synthetic = TensorSplit(torch.ones(n_synthetic, 1, 4, 4), torch.full((n_synthetic,), -1))
    return real, synthetic


def test_every_batch_holds_the_share_whatever_the_set_sizes():
    real, synthetic = _splits()  # 7.5x more synthetic than real images: by count 88% would be synthetic
    batches = MixedSplit(real, synthetic, 0.25).batches(8, shuffle=True, seed=3)
    seen_real = []
    for idx, x, y in batches.epoch(0):
        is_synthetic = x.flatten(1).mean(1) == 1
        assert int(is_synthetic.sum()) == round(len(idx) * 0.25)  # 2 of 8 in every batch
        assert torch.equal(is_synthetic, idx >= len(real)) and torch.all(y[is_synthetic] == -1)
        seen_real += idx[~is_synthetic].tolist()
    assert sorted(seen_real) == list(range(len(real)))  # an epoch is one pass over the real samples
    assert len(batches) == len(real) + len(real) // 3


def test_synthetic_samples_are_not_repeated_before_all_were_shown_and_replay_the_same():
    real, synthetic = _splits(n_real=60, n_synthetic=25)
    batches = MixedSplit(real, synthetic, 0.5).batches(10, shuffle=True, seed=0)
    drawn = [i for idx, _, _ in batches.epoch(1) for i in idx.tolist() if i >= 60]
    assert len(drawn) == 60 and sorted(drawn[:25]) == list(range(60, 85))  # first pass: each once
    again = [i for idx, _, _ in batches.epoch(1) for i in idx.tolist() if i >= 60]
    assert drawn == again  # seeded per epoch: a resumed epoch draws the same samples


def test_batch_shares_keep_one_of_each():
    assert batch_shares(64, 0.5) == (32, 32)
    assert batch_shares(4, 0.01) == (3, 1) and batch_shares(4, 0.99) == (1, 3)
    assert np.isclose(sum(batch_shares(128, 0.3)), 128)


class _Plus:
    """A per-sample 'view' anyone can check: the sample plus 10."""

    deterministic = True

    def __call__(self, sample):
        return sample + 10


def test_views_reach_real_and_synthetic_samples_and_unknown_options_are_errors():
    real = TensorSplit(torch.zeros(12, 1, 4, 4), torch.arange(12) % 3, workers=0)
    synthetic = TensorSplit(torch.ones(30, 1, 4, 4), torch.full((30,), -1), workers=0)
    mixed = MixedSplit(real, synthetic, 0.5)
    batches = mixed.batches(4, shuffle=True, seed=1, transform=_Plus())
    values = torch.cat([x.flatten(1).mean(1) for _, x, _ in batches.epoch(0)])
    assert set(values.tolist()) == {10.0, 11.0}  # train.augment's views for both kinds, none left out
    with pytest.raises(TypeError, match="unexpected keyword argument 'workerz'"):
        mixed.batches(4, shuffle=True, workerz=2)  # a misspelt option is not silently dropped
    with pytest.raises(ValueError, match="no replayable views"):
        mixed.batches(4, shuffle=True, views=2)
