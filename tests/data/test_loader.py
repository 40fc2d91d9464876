import subprocess
import sys

import numpy as np
import pytest
import torch

from edgekd.data import Preprocess
from edgekd.data.datasets import FileSource, SampleDataset, augmented_view
from edgekd.data.listing import list_imagefolder
from edgekd.data.loader import EpochSampler, epoch_batches, make_loader
from edgekd.data.transforms import TrainTransformConfig, eval_transform, train_transform
from edgekd.distill.distributed import Dist
from tests.data.imagefolders import write_folder

PRE = Preprocess(24, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 0.875, 255.0)
AUGMENT = TrainTransformConfig(auto_augment="rand-m9-mstd0.5", re_prob=0.5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return list_imagefolder(write_folder(tmp_path_factory.mktemp("ds"), per_class=8)).folders["all"]


def _train_set(files, views=None):
    return SampleDataset(FileSource(files, 3, 28), train_transform(AUGMENT, PRE), seed=7, views=views)


def test_items_are_image_label_index(files):
    x, y, index = SampleDataset(FileSource(files, 3, None), eval_transform(PRE))[9]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and (y, index) == (1, 9)


def test_the_order_is_the_trainers_and_ranks_shard_it_like_dist_shard():
    n, seed, epoch = 21, 3, 4
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    single = EpochSampler(n, seed=seed)
    single.set_epoch(epoch)
    assert [i for i, _ in single] == expected.tolist() and {e for _, e in single} == {epoch}
    shards = []
    for rank in range(4):
        sampler = EpochSampler(n, seed=seed, rank=rank, world_size=4)
        sampler.set_epoch(epoch)
        shards.append([i for i, _ in sampler])
        assert shards[-1] == Dist(rank=rank, world_size=4).shard(expected).tolist() and len(sampler) == 6
    assert set(sum(shards, [])) == set(range(n))
    evaluation = [list(EpochSampler(n, shuffle=False, rank=r, world_size=4, pad=False)) for r in range(4)]
    assert sorted(i for shard in evaluation for i, _ in shard) == list(range(n))  # each sample once


def test_an_epoch_is_the_same_with_any_worker_count_and_after_a_restart(files):
    def epoch(workers, e):
        loader = make_loader(_train_set(files), 4, train=True, seed=7, workers=workers)
        return [b for b in epoch_batches(loader, e)]

    in_process, two_workers = epoch(0, 2), epoch(2, 2)
    for (xa, ya, ia), (xb, yb, ib) in zip(in_process, two_workers, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    other = epoch(0, 3)
    assert not torch.equal(torch.cat([b[2] for b in other]), torch.cat([b[2] for b in in_process]))


def test_the_loader_leaves_the_training_processs_generators_alone(files):
    torch.manual_seed(11)
    before = torch.get_rng_state()
    list(epoch_batches(make_loader(_train_set(files), 4, train=True, workers=0), 0))
    assert torch.equal(torch.get_rng_state(), before)


def test_replayable_views_repeat_every_k_epochs_in_another_process(files):
    dataset = _train_set(files, views=3)
    view = augmented_view(dataset, 5, 1)
    assert torch.equal(view, augmented_view(dataset, 5, 4)) and not torch.equal(view, augmented_view(dataset, 5, 2))
    script = f"""
import sys, torch
from tests.data.test_loader import _train_set, FileSource
from edgekd.data.listing import list_imagefolder
files = list_imagefolder({str(files.root)!r}).folders["all"]
torch.save(_train_set(files, views=3)[(5, 7)][0], sys.argv[1])
"""
    out = files.root.parent / "view.pt"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True)
    assert torch.equal(torch.load(out), view)


def test_batches_are_pinned_on_cuda_only(files):
    loader = make_loader(SampleDataset(FileSource(files, 3, None), eval_transform(PRE)), 8, train=False, workers=0)
    assert not loader.pin_memory and [len(b[0]) for b in loader] == [8, 8, 8]
    cuda = make_loader(loader.dataset, 8, train=False, workers=2, device="cuda")  # built, not iterated, here
    assert cuda.pin_memory and cuda.prefetch_factor == 2 and cuda.persistent_workers
    assert np.array_equal(torch.cat([b[2] for b in loader]).numpy(), np.arange(24))
