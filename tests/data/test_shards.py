import io

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.data import Preprocess
from edgekd.data.loader import epoch_batches, make_loader
from edgekd.data.shards import SHARD_STRIDE, ShardDataset, shard_urls
from edgekd.data.transforms import TrainTransformConfig, eval_transform, train_transform
from edgekd.errors import DataError
from tests.data.imagefolders import smooth_image

PRE = Preprocess(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 1.0, 255.0)


def _write_shards(folder, shards=4, per_shard=5, broken=None):
    import webdataset as wds

    folder.mkdir()
    rng = np.random.default_rng(0)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"train-{s:03d}.tar")) as sink:
            for k in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(smooth_image(rng, 20 + k, 24)).save(buf, format="JPEG")
                data = buf.getvalue()[:100] if (s, k) == broken else buf.getvalue()
                sink.write({"__key__": f"s{s}k{k}", "jpg": data, "cls": str((s + k) % 3).encode()})
    return folder


def test_shard_specs(tmp_path):
    folder = _write_shards(tmp_path / "shards")
    listed = [str(folder / f"train-{s:03d}.tar") for s in range(4)]
    assert shard_urls(str(folder)) == listed and shard_urls(str(folder / "train-*.tar")) == listed
    piped = shard_urls(f"pipe:cat {folder}/train-{{000..003}}.tar")
    assert piped == [f"pipe:cat {u}" for u in listed]
    assert len(list(ShardDataset(piped, eval_transform(PRE), channels=3, short_side=None))) == 20
    with pytest.raises(DataError, match="names no tar shards"):
        shard_urls(str(tmp_path / "nothing-*.tar"))


def _all_items(dataset, rank, world, workers, epoch=0):
    loader = make_loader(dataset, 4, train=True, seed=1, workers=workers, rank=rank, world_size=world)
    return [(x, y, i) for xb, yb, ib in epoch_batches(loader, epoch) for x, y, i in zip(xb, yb.tolist(), ib.tolist())]


def test_each_rank_and_worker_reads_its_own_shards(tmp_path):
    urls = shard_urls(str(_write_shards(tmp_path / "shards")))
    tf = train_transform(TrainTransformConfig(), PRE)
    per_rank = [_all_items(ShardDataset(urls, tf, channels=3, short_side=16, seed=1), r, 2, workers=2)
                for r in range(2)]
    indices = [{i for _, _, i in items} for items in per_rank]
    expected = {s * SHARD_STRIDE + k for s in range(4) for k in range(5)}
    assert not indices[0] & indices[1] and indices[0] | indices[1] == expected
    labels = {i: y for items in per_rank for _, y, i in items}
    assert all(labels[s * SHARD_STRIDE + k] == (s + k) % 3 for s in range(4) for k in range(5))
    # a sample's augmentation depends on (seed, index, epoch), not on who decodes it
    single = {i: x for x, _, i in _all_items(ShardDataset(urls, tf, channels=3, short_side=16, seed=1), 0, 1, 0)}
    assert all(torch.equal(single[i], x) for items in per_rank for x, _, i in items)
    reordered = [i for _, _, i in _all_items(ShardDataset(urls, tf, channels=3, short_side=16, seed=1), 0, 1, 0, 1)]
    assert reordered != list(single) and sorted(reordered) == sorted(single)


def test_bad_samples_in_shards(tmp_path):
    urls = shard_urls(str(_write_shards(tmp_path / "shards", broken=(2, 3))))
    evaluate = eval_transform(PRE)
    with pytest.raises(DataError, match=r"train-002.tar:s2k3"):
        list(ShardDataset(urls, evaluate, channels=3, short_side=None))
    kept = list(ShardDataset(urls, evaluate, channels=3, short_side=None, on_bad_image="skip"))
    assert len(kept) == 19 and 2 * SHARD_STRIDE + 3 not in {i for _, _, i in kept}
    with pytest.raises(DataError, match="2 shard"):
        make_loader(ShardDataset(urls[:2], evaluate, channels=3, short_side=None), 2, train=False, world_size=3)
