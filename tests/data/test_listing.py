import os
import shutil

import numpy as np
import pytest

from edgekd.data.identity import dataset_identity, split_identities
from edgekd.data.listing import check_unchanged, format_summary, list_imagefolder, summarise
from edgekd.data.splits import imagefolder_splits
from edgekd.errors import DataError
from tests.data.imagefolders import write_folder


def test_flat_layout_lists_paths_labels_sizes_and_mtimes(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=4)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.jpg").write_bytes(b"")
    (root / "dog" / "nested").mkdir()
    shutil.copy(root / "dog" / "000.jpg", root / "dog" / "nested" / "x.JPG")
    listing = list_imagefolder(root)
    files = listing.folders["all"]
    assert listing.classes == ("cat", "dog", "fox") and not listing.split_folders
    assert len(files) == 13 and np.bincount(files.labels).tolist() == [4, 5, 4]
    assert files.relpath(0) == "cat/000.jpg" and files.path(0) == root / "cat" / "000.jpg"
    assert "dog/nested/x.JPG" in [files.relpath(i) for i in range(len(files))]
    st = os.stat(files.path(5))
    assert (files.sizes[5], files.mtimes[5]) == (st.st_size, st.st_mtime_ns)
    sub = files.subset(np.array([12, 0]))
    assert [sub.relpath(0), sub.relpath(1)] == [files.relpath(12), files.relpath(0)]
    assert sub.labels.tolist() == [2, 0]


def test_split_layout_and_summary(tmp_path):
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        write_folder(tmp_path / split, classes=("a", "b"), per_class=n, seed=len(split))
    listing = list_imagefolder(tmp_path)
    assert listing.split_folders and set(listing.folders) == {"train", "val", "test"}
    assert listing.folders["val"].relpath(0) == "val/a/000.jpg"
    summary = summarise(listing.classes, {k: v.labels for k, v in listing.folders.items()})
    assert summary["splits"]["train"] == {"images": 10, "per_class": {"a": 5, "b": 5}}
    table = format_summary(summary)
    assert table.splitlines()[0].split() == ["class", "train", "val", "test"]
    assert table.splitlines()[-1].split() == ["total", "10", "4", "6"]


@pytest.mark.parametrize("make, message", [
    (lambda root: (root / "empty_class").mkdir(), "hold no images: empty_class"),
    (lambda root: (root / "dog" / "gone.jpg").symlink_to(root / "nowhere.jpg"), r"Cannot read .*dog/gone.jpg"),
    (lambda root: [os.remove(p) for p in root.rglob("*.jpg")], "No images under"),
])
def test_bad_folders_are_named(tmp_path, make, message):
    root = write_folder(tmp_path / "ds", per_class=1)
    make(root)
    with pytest.raises(DataError, match=message):
        list_imagefolder(root)


def test_class_mismatch_between_splits_names_the_classes(tmp_path):
    write_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=1)
    write_folder(tmp_path / "val", classes=("a", "b", "d"), per_class=1)
    with pytest.raises(DataError, match=r"only in train: c; only in val: d"):
        list_imagefolder(tmp_path)


def test_vanished_dataset_and_changed_files(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=2)
    files = list_imagefolder(root).folders["all"]
    check_unchanged(files)
    os.remove(files.path(0))
    (files.path(1)).write_bytes(b"rewritten")
    with pytest.raises(DataError, match=r"1 vanished \(cat/000.jpg\); 1 changed \(cat/001.jpg\)"):
        check_unchanged(files)
    shutil.rmtree(root)
    with pytest.raises(DataError, match="no longer exists"):
        list_imagefolder(root)


def test_identity_follows_the_files_and_the_preprocessing(tmp_path):
    root = write_folder(tmp_path / "ds", per_class=6)
    pre = {"input_size": 32, "crop_pct": 0.875}
    splits = imagefolder_splits(list_imagefolder(root), 0.25, 0.25, seed=0)
    before = split_identities(splits, pre)
    assert split_identities(imagefolder_splits(list_imagefolder(root), 0.25, 0.25, seed=0), pre) == before
    assert dataset_identity(splits["train"], {**pre, "input_size": 64}) != before["train"]
    # rewrite one validation image: only val's identity moves
    target = splits["val"].path(0)
    target.write_bytes(target.read_bytes() + b"\0")
    after = split_identities(imagefolder_splits(list_imagefolder(root), 0.25, 0.25, seed=0), pre)
    assert {k for k in before if before[k] != after[k]} == {"val"}
    # same bytes, new mtime (a copy without -p): a new identity too
    os.utime(target, ns=(1, 1))
    assert split_identities(imagefolder_splits(list_imagefolder(root), 0.25, 0.25, 0), pre)["val"] != after["val"]
