import json

import numpy as np
import pytest
import torch

from edgekd.errors import DataError
from edgekd.synth.store import FORMAT, U8StoreWriter, open_store, partial_dir
from edgekd.synth.tensors import from_uint8, to_uint8

SHAPE = (3, 4, 5)


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rng.integers(-1, 10, n).astype(np.int64)


def test_store_round_trips_and_follows_the_format(tmp_path):
    path = tmp_path / "s"
    writer = U8StoreWriter(path, SHAPE)
    (a, la), (b, lb) = _batch(3, 0), _batch(2, 1)
    writer.append(a, la)
    writer.append(b, lb)
    assert not path.exists() and partial_dir(path).is_dir()  # only the .partial name until finished
    writer.finish({"source": "test"})
    assert not partial_dir(path).exists()
    index = json.loads((path / "index.json").read_text())
    assert index == {"format": FORMAT, "count": 5, "channels": 3, "height": 4, "width": 5, "source": "test"}
    raw = np.fromfile(path / "images.u8", dtype=np.uint8)  # records back to back, C-order
    assert np.array_equal(raw, np.concatenate([a, b]).reshape(-1))
    labels = np.load(path / "labels.npy")
    assert labels.dtype == np.int64 and np.array_equal(labels, np.concatenate([la, lb]))
    store = open_store(path)
    assert len(store) == 5 and store.shape == SHAPE
    image, label = store[3]
    assert np.array_equal(image, b[0]) and label == lb[0]
    assert [len(x) for x, _ in store.batches(2)] == [2, 2, 1]


def test_a_crash_mid_batch_is_cut_back_and_the_state_file_follows_its_batch(tmp_path):
    path = tmp_path / "s"
    writer = U8StoreWriter(path, SHAPE)
    writer.append(*_batch(3, 0), write_state=lambda p: p.write_text("after batch 1"))
    writer.append(*_batch(3, 1), write_state=lambda p: p.write_text("after batch 2"))
    assert writer.state_path.read_text() == "after batch 2"
    assert len(list(writer.dir.glob("state-*"))) == 1  # the superseded checkpoint is gone
    with open(writer.dir / "images.u8", "ab") as fh:  # a third batch half-written, never committed
        fh.write(b"\x01" * 17)
    (writer.dir / "state-000003.pt").write_text("uncommitted")

    reopened = U8StoreWriter(path, SHAPE)
    assert reopened.count == 6 and reopened.batches == 2 and reopened.state_path.read_text() == "after batch 2"
    assert (reopened.dir / "images.u8").stat().st_size == 6 * 60
    reopened.append(*_batch(1, 2))
    store = open_store(reopened.finish({}))
    assert np.array_equal(store.images[6], _batch(1, 2)[0][0])
    assert not list(store.path.glob("state-*")) and not (store.path / "progress.json").exists()


def test_incomplete_or_damaged_stores_are_refused_with_a_hint(tmp_path):
    path = tmp_path / "s"
    U8StoreWriter(path, SHAPE).append(*_batch(2, 0))
    with pytest.raises(DataError, match="interrupted"):
        open_store(path)
    writer = U8StoreWriter(path, SHAPE)
    with pytest.raises(DataError, match="does not fit"):
        writer.append(np.zeros((2, 3, 4, 4), np.uint8), np.zeros(2, np.int64))
    writer.finish({})
    with open(path / "images.u8", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(DataError, match="damaged"):
        open_store(path)


def test_uint8_conversion_round_trips_within_half_a_grey_level():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = torch.rand(4, 3, 6, 6)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pixels = to_uint8(normalised, mean, std)
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 3, 6, 6)
    assert np.abs(pixels.astype(float) - x.numpy() * 255).max() <= 0.5 + 1e-4
    back = from_uint8(pixels, mean, std) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6
    assert to_uint8(torch.full((1, 3, 1, 1), 99.0), mean, std).max() == 255  # out of range: clipped
