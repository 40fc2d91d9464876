import json

import numpy as np
import pytest
import torch

import edgekd.data.u8cache as u8cache
from edgekd.data import Preprocess
from edgekd.data.datasets import FileSource, SampleDataset, U8Source
from edgekd.data.listing import list_imagefolder
from edgekd.data.transforms import eval_transform
from edgekd.data.u8store import FORMAT, U8Store, U8Writer, write_u8_store
from edgekd.errors import DataError
from tests.data.imagefolders import write_folder

PRE = Preprocess(24, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic", 0.875, 255.0)


@pytest.fixture
def files(tmp_path):
    return list_imagefolder(write_folder(tmp_path / "ds", per_class=7, sizes=(30, 120))).folders["all"]


@pytest.fixture
def decoder_calls(monkeypatch):
    """Count decodes (workers=0 keeps them in this process)."""
    calls = []
    real = u8cache.load_image
    monkeypatch.setattr(u8cache, "load_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def test_cache_serves_the_eval_transform_exactly_and_is_built_once(tmp_path, files, decoder_calls):
    store = u8cache.build_u8_cache(files, PRE, tmp_path / "cache", workers=0)
    assert len(decoder_calls) == len(files) == store.count and store.shape == (3, 27, 27)  # 24 / 0.875
    assert np.array_equal(store.labels, files.labels)
    cached = SampleDataset(U8Source(store), eval_transform(PRE))
    decoded = SampleDataset(FileSource(files, 3, u8cache.cache_side(PRE)), eval_transform(PRE))
    for i in range(len(files)):
        assert torch.equal(cached[i][0], decoded[i][0]) and cached[i][1:] == decoded[i][1:]
    again = u8cache.build_u8_cache(files, PRE, tmp_path / "cache", workers=0)
    assert again.path == store.path and len(decoder_calls) == len(files)  # second build: no decode
    other = Preprocess(**{**PRE.to_dict(), "input_size": 20})
    assert u8cache.cache_path(files, other, tmp_path / "cache") != store.path


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path, files, monkeypatch, decoder_calls):
    monkeypatch.setattr(u8cache, "CHECKPOINT_EVERY", 5)
    real = u8cache.load_image

    def dies_at_eighteen(*args, **kwargs):
        if len(decoder_calls) == 18:  # inside the second batch of 16
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(u8cache, "load_image", dies_at_eighteen)
    with pytest.raises(KeyboardInterrupt):
        u8cache.build_u8_cache(files, PRE, tmp_path / "cache", workers=0)
    partial = u8cache.cache_path(files, PRE, tmp_path / "cache").with_name(
        u8cache.cache_path(files, PRE, tmp_path / "cache").name + ".partial")
    assert json.loads((partial / "state.json").read_text())["consumed"] == 15
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(u8cache, "load_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    store = u8cache.build_u8_cache(files, PRE, tmp_path / "cache", workers=0)
    assert len(calls) == len(files) - 15 and store.count == len(files) and not partial.exists()
    fresh = u8cache.build_u8_cache(files, PRE, tmp_path / "fresh", workers=2)
    assert all(np.array_equal(store.read(i), fresh.read(i)) for i in range(len(files)))


def test_bad_images_in_a_cache_build(tmp_path, files):
    data = files.path(3).read_bytes()
    files.path(3).write_bytes(data[: len(data) // 2])
    files.path(9).write_text("no picture")
    files = list_imagefolder(files.root).folders["all"]  # new sizes and mtimes
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*cat/003.jpg.*dog/002.jpg"):
        u8cache.build_u8_cache(files, PRE, tmp_path / "cache", workers=0)
    store = u8cache.build_u8_cache(files, PRE, tmp_path / "cache", on_bad_image="skip", workers=0)
    assert store.count == len(files) - 2 and [b["path"] for b in store.index["skipped"]] == ["cat/003.jpg",
                                                                                            "dog/002.jpg"]
    assert u8cache.cache_summary(store)["skipped"] == 2
    with pytest.raises(DataError, match="2 unreadable"):  # a skip-built cache does not hide them from `error`
        u8cache.build_u8_cache(files, PRE, tmp_path / "cache", workers=0)


def test_store_format_round_trip_and_checks(tmp_path):
    images = [np.full((1, 4, 5), k, np.uint8) for k in range(3)]
    store = write_u8_store(tmp_path / "synthetic", images, [2, -1, 0], generator="test")
    index = json.loads((tmp_path / "synthetic" / "index.json").read_text())
    assert {k: index[k] for k in ("format", "count", "channels", "height", "width", "generator")} == {
        "format": FORMAT, "count": 3, "channels": 1, "height": 4, "width": 5, "generator": "test"}
    raw = (tmp_path / "synthetic" / "images.u8").read_bytes()
    assert raw == b"".join(i.tobytes() for i in images)  # C-order records back to back
    assert np.load(tmp_path / "synthetic" / "labels.npy").tolist() == [2, -1, 0]
    assert np.array_equal(U8Store(tmp_path / "synthetic").read(2), images[2]) and len(store) == 3
    with open(tmp_path / "synthetic" / "images.u8", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(DataError, match="inconsistent"):
        U8Store(tmp_path / "synthetic")
    writer = U8Writer(tmp_path / "other", (1, 4, 5))
    with pytest.raises(ValueError, match="uint8"):
        writer.append(np.zeros((1, 4, 4), np.uint8), 0)
    writer.close()
