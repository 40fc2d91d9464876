import gzip
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from edgekd.config import DataConfig
from edgekd.data import CARVED, carve, load_data, stratified_split, stratified_subsample
from edgekd.data.calib import CalibManifest, select
from edgekd.data.sources import KNOWN_IDX_MD5, load_idx
from edgekd.errors import DataError


def test_digits_split_is_deterministic_and_normalised():
    a, b = load_data(DataConfig()), load_data(DataConfig())
    assert a.fingerprint() == b.fingerprint()
    assert a.train_x.shape[1:] == (1, 32, 32) and a.train_x.dtype == np.float32
    assert a.summary()["splits"] == {"train": 1079, "val": 359, "test": 359}  # 60/20/20, per class
    assert np.bincount(a.test_y).min() >= 35  # every digit in the test split
    # normalised with the training split's own statistics
    assert abs(float(a.train_x.mean())) < 1e-3 and abs(float(a.train_x.std()) - 1) < 1e-3


def test_another_seed_gives_another_split():
    assert load_data(DataConfig(seed=1)).fingerprint() != load_data(DataConfig(seed=0)).fingerprint()


def test_stratified_split_keeps_class_balance():
    labels = np.repeat(np.arange(4), 50)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 200
    assert np.bincount(labels[val]).tolist() == [10, 10, 10, 10]


def test_carve_gives_three_disjoint_stratified_splits():
    labels = np.repeat(np.arange(4), [50, 50, 10, 2])
    train, val, test = carve(labels, 0.2, 0.2, seed=1)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))  # a partition
    assert np.bincount(labels[test]).tolist() == [10, 10, 2, 1] and np.bincount(labels[val], minlength=4).tolist() == [10, 10, 2, 0]
    assert set(labels[train]) == {0, 1, 2, 3}  # training keeps every class, even one of two samples
    again = carve(labels, 0.2, 0.2, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))
    # a split the source has is not carved: val only
    train2, val2, test2 = carve(labels, 0.2, 0.0, seed=1)
    assert len(test2) == 0 and len(val2) == 23 and len(train2) == len(labels) - 23  # 10 + 10 + 2 + 1


def test_stratified_subsample_keeps_class_shares():
    labels = np.repeat(np.arange(3), [600, 300, 100])
    rows = stratified_subsample(labels, 100, seed=0)
    assert np.bincount(labels[rows]).tolist() == [60, 30, 10] and np.all(np.diff(rows) > 0)
    assert np.array_equal(stratified_subsample(labels, 5000, seed=0), np.arange(1000))


def test_idx_test_split_is_the_official_test_file_and_val_is_carved_from_train(tmp_path):
    rng = np.random.default_rng(0)
    for name in KNOWN_IDX_MD5:
        n = 40 if name.startswith("train") else 12
        shape = (n, 28, 28) if "images" in name else (n,)
        _write_idx(tmp_path / name.removesuffix(".gz"), rng.integers(0, 4 if "labels" in name else 255, shape))
    data = load_data(DataConfig(kind="idx", path=tmp_path, input_size=8, val_fraction=0.25))
    assert data.summary()["splits"] == {"train": 30, "val": 10, "test": 12}
    assert data.origin["test"] == "the source's own test files" and "carved" in data.origin["val"]


def test_calibration_selection_is_balanced_and_reproducible():
    labels = np.repeat(np.arange(10), 30)
    manifest = CalibManifest(samples=50, seed=1)
    first, second = select(labels, manifest), select(labels, manifest)
    assert np.array_equal(first, second)
    assert np.bincount(labels[first]).tolist() == [5] * 10


def _write_idx(path, array: np.ndarray):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open  # unzipped files are read unchecked
    with opener(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_with_wrong_md5_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    for name in KNOWN_IDX_MD5:
        shape = (20, 28, 28) if "images" in name else (20,)
        _write_idx(tmp_path / name, rng.integers(0, 10 if "labels" in name else 255, shape))
    with pytest.raises(DataError, match="MD5"):
        load_idx(tmp_path)


def test_idx_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_idx(tmp_path)


def test_imagefolder_reads_class_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_data(DataConfig(kind="imagefolder", path=tmp_path, channels=3, input_size=24, workers=0),
                     teacher_model="resnet18", cache_root=tmp_path / "cache")
    assert data.classes == ["cat", "dog"]
    assert data.summary()["splits"] == {"train": 12, "val": 4, "test": 4}
    assert data.train.stack(np.arange(2)).shape == (2, 3, 24, 24)
    # preprocessing comes from the teacher's timm pretrained config
    assert data.preprocess.mean == (0.485, 0.456, 0.406) and data.preprocess.interpolation == "bicubic"


def test_imagefolder_test_folder_is_the_test_split(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    data = load_data(DataConfig(kind="imagefolder", path=tmp_path, input_size=8, val_fraction=0.2))
    assert data.summary()["splits"] == {"train": 16, "val": 4, "test": 6}  # val carved from train, test as given
    assert data.origin == {"val": CARVED, "test": str(tmp_path / "test")}


def test_imagefolder_without_classes_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="class folders"):
        load_data(DataConfig(kind="imagefolder", path=tmp_path))


def test_idx_reading_is_bounded_by_the_header_and_a_limit(tmp_path):
    from edgekd.data.sources import MAX_IDX_BYTES, _read_idx

    _write_idx(tmp_path / "ok.gz", np.arange(24).reshape(2, 3, 4))
    assert _read_idx(tmp_path / "ok.gz").shape == (2, 3, 4)
    (tmp_path / "short").write_bytes(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 100) + b"\0" * 10)
    with pytest.raises(DataError, match="truncated"):
        _read_idx(tmp_path / "short")
    (tmp_path / "huge").write_bytes(struct.pack(">HBB", 0, 0x08, 2) + struct.pack(">2I", 2**31 - 1, 2**31 - 1))
    with pytest.raises(DataError, match=f"up to {MAX_IDX_BYTES / 2**30:.0f} GiB"):
        _read_idx(tmp_path / "huge")


def test_a_decompression_bomb_image_is_a_data_error(tmp_path, monkeypatch):
    from PIL import Image

    from edgekd.data import preprocess_image

    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 is then > 2x the limit: PIL's bomb error
    pre = SimpleNamespace(channels=1, input_size=32, crop_pct=1.0, interpolation="bilinear")
    with pytest.raises(DataError, match="Cannot read image"):
        preprocess_image(tmp_path / "big.png", pre)
