"""Splits as the trainers see them: the same batches from arrays and from files, seeded views that do
not depend on the worker count, timm's transform in the workers."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.config import DataConfig
from edgekd.data import load_data
from edgekd.data.splitset import TensorSplit, eval_batch_size


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(10):
            pixels = rng.integers(0, 255, (20 + i, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


def _data(folder, tmp_path, **kw):
    cfg = DataConfig(kind="imagefolder", path=folder, input_size=8, channels=3, val_fraction=0.2, test_fraction=0.2,
                     **kw)
    return load_data(cfg, cache_root=tmp_path / "cache")


def _epoch(split, epoch, **kw):
    batches = split.batches(4, shuffle=True, seed=3, **kw)
    return [(idx.clone(), x.clone(), y.clone()) for idx, x, y in batches.epoch(epoch)]


def test_a_tensor_split_shards_training_and_scores_every_sample_once():
    split = TensorSplit(torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous(),
                        torch.arange(10))
    ranks = [split.batches(3, shuffle=True, seed=1, rank=r, world_size=3) for r in range(3)]
    seen = [torch.cat([idx for idx, _, _ in b.epoch(0)]) for b in ranks]
    assert {len(s) for s in seen} == {4}  # padded: every rank takes as many steps
    assert set(torch.cat(seen).tolist()) == set(range(10))
    evals = [torch.cat([y for _, _, y in split.batches(3, shuffle=False, rank=r, world_size=3).epoch(0)])
             for r in range(3)]
    assert sorted(torch.cat(evals).tolist()) == list(range(10))  # each once, none padded
    assert eval_batch_size((3, 224, 224)) == 111 and eval_batch_size((1, 8, 8)) == 256


def test_files_stream_the_eval_transform_in_order(folder, tmp_path):
    data = _data(folder, tmp_path, workers=0)
    train = data.train
    streamed = torch.cat([x for _, x, _ in train.batches(5, shuffle=False).epoch(0)])
    np.testing.assert_array_equal(streamed.numpy(), train.stack(np.arange(len(train))))
    part = train.take(np.array([2, 0]), labels=np.array([-1, 1]))
    idx, x, y = next(iter(part.batches(2, shuffle=False).epoch(0)))
    assert idx.tolist() == [0, 1] and y.tolist() == [-1, 1]  # indices into the part, its own labels
    np.testing.assert_array_equal(x.numpy(), train.stack(np.array([2, 0])))


def test_timm_views_are_seeded_per_sample_and_epoch_whatever_the_workers(folder, tmp_path):
    timm = {"augment": "timm", "train_transform": {"scale": [0.3, 1.0]}}
    data = _data(folder, tmp_path, workers=0, **timm)
    in_process = _epoch(data.train, 1, augment="timm")
    in_workers = _epoch(_data(folder, tmp_path, workers=2, **timm).train, 1, augment="timm")
    for (i0, x0, y0), (i1, x1, y1) in zip(in_process, in_workers, strict=True):
        assert torch.equal(i0, i1) and torch.equal(y0, y1) and torch.equal(x0, x1)
    again = _epoch(data.train, 2, augment="timm")
    order = torch.cat([i for i, _, _ in in_process])
    views1 = torch.cat([x for _, x, _ in in_process])[order.argsort()]
    views2 = torch.cat([x for _, x, _ in again])[torch.cat([i for i, _, _ in again]).argsort()]
    assert not torch.equal(views1, views2)  # another epoch, other crops
    plain = torch.from_numpy(data.train.stack(np.arange(len(data.train))))
    assert views1.shape == plain.shape and not torch.equal(views1, plain)  # not the eval transform
