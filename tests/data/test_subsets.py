import numpy as np

from edgekd.data import Preprocess
from edgekd.data.datasets import FileSource, SampleDataset
from edgekd.data.listing import list_imagefolder
from edgekd.data.subsets import stratified_subset, write_subset
from edgekd.data.transforms import eval_transform
from tests.data.imagefolders import write_folder


def test_capped_subsets_keep_class_shares():
    labels = np.repeat(np.arange(3), [600, 300, 100])
    rows = stratified_subset(labels, 100, seed=0)
    assert len(rows) == 100 and np.bincount(labels[rows]).tolist() == [60, 30, 10]
    assert np.array_equal(rows, stratified_subset(labels, 100, seed=0)) and np.all(np.diff(rows) > 0)
    assert not np.array_equal(rows, stratified_subset(labels, 100, seed=1))
    assert np.bincount(labels[stratified_subset(labels, 7, 0)]).tolist() == [4, 2, 1]
    rare = np.repeat(np.arange(3), [98, 1, 1])
    assert np.bincount(rare[stratified_subset(rare, 5, 0)]).tolist() == [3, 1, 1]  # every class present
    assert len(stratified_subset(labels, 5000, 0)) == 1000


def test_write_subset_streams_only_the_chosen_samples(tmp_path, monkeypatch):
    files = list_imagefolder(write_folder(tmp_path / "ds", per_class=6)).folders["all"]
    pre = Preprocess(16, 3, (0.5,) * 3, (0.25,) * 3, "bilinear", 1.0, 255.0)
    dataset = SampleDataset(FileSource(files, 3, None), eval_transform(pre))
    rows = stratified_subset(dataset.labels, 6, seed=0)
    loaded = []
    real_load = FileSource.load
    monkeypatch.setattr(FileSource, "load", lambda self, i: loaded.append(i) or real_load(self, i))
    count = write_subset(dataset, rows, tmp_path / "val.npz", batch_size=4, workers=0,
                         extra={"classes": np.array(files.classes)})
    assert count == 6 and sorted(loaded) == rows.tolist()
    with np.load(tmp_path / "val.npz") as npz:
        assert npz["x"].shape == (6, 3, 16, 16) and npz["x"].dtype == np.float32
        assert np.array_equal(npz["x"][2], dataset[int(rows[2])][0].numpy())
        assert np.array_equal(npz["y"], files.labels[rows]) and np.array_equal(npz["rows"], rows)
        assert npz["classes"].tolist() == ["cat", "dog", "fox"]
    assert not (tmp_path / "val.npz.partial").exists()
