import numpy as np
import pytest

from edgekd.data import stratified_split
from edgekd.data.listing import list_imagefolder
from edgekd.data.splits import folder_splits, imagefolder_splits, three_way_split
from tests.data.imagefolders import write_folder

LABELS = np.repeat(np.arange(4), [50, 30, 20, 10])


def test_three_way_is_disjoint_complete_and_stratified():
    s = three_way_split(LABELS, 0.2, 0.1, seed=3)
    together = np.concatenate([s.train, s.val, s.test])
    assert len(together) == len(LABELS) and len(np.unique(together)) == len(LABELS)
    assert np.bincount(LABELS[s.val]).tolist() == [10, 6, 4, 2]
    assert np.bincount(LABELS[s.test]).tolist() == [5, 3, 2, 1]
    assert s.counts() == {"train": 77, "val": 22, "test": 11}
    train, val, test = three_way_split(LABELS, 0.2, 0.1, seed=3)  # unpacks; the same again
    assert np.array_equal(train, s.train) and np.array_equal(val, s.val) and np.array_equal(test, s.test)


def test_without_test_it_is_the_two_way_split_and_test_fraction_never_moves_val():
    train, val = stratified_split(LABELS, 0.2, seed=5)
    two = three_way_split(LABELS, 0.2, 0.0, seed=5)
    assert np.array_equal(two.train, train) and np.array_equal(two.val, val) and len(two.test) == 0
    assert np.array_equal(three_way_split(LABELS, 0.2, 0.15, seed=5).val, val)
    assert not np.array_equal(three_way_split(LABELS, 0.2, 0.0, seed=6).val, val)


def test_a_class_too_small_for_three_splits_keeps_training_then_test():
    tiny = three_way_split(np.array([0, 0, 0, 0, 0, 1, 1]), 0.2, 0.2, seed=0)  # class 1: one train, one test
    assert [np.bincount(np.array([0, 0, 0, 0, 0, 1, 1])[rows], minlength=2).tolist() for rows in tiny] == [
        [3, 1], [1, 0], [1, 1]]


@pytest.mark.parametrize("folders, expected", [
    ({"all"}, {"train": "all", "val": "all", "test": "all"}),
    ({"train", "val"}, {"train": "train", "val": "val", "test": "train"}),
    ({"train", "test"}, {"train": "train", "val": "train", "test": "test"}),
    ({"train", "val", "test"}, {"train": "train", "val": "val", "test": "test"}),
])
def test_imagefolder_rule_uses_the_folders_present_and_carves_the_rest(folders, expected):
    labels = {name: LABELS for name in folders}
    plan = folder_splits(labels, 0.2, 0.1, seed=0)
    assert {split: folder for split, (folder, _) in plan.items()} == expected
    for split, (folder, rows) in plan.items():
        if folder not in ("all", "train"):
            assert np.array_equal(rows, np.arange(len(LABELS)))
    carved = [rows for folder, rows in plan.values() if folder in ("all", "train")]
    joined = np.concatenate(carved)
    assert len(joined) == len(np.unique(joined)) == len(LABELS)


def test_imagefolder_splits_give_file_lists(tmp_path):
    write_folder(tmp_path / "train", classes=("a", "b"), per_class=10)
    write_folder(tmp_path / "val", classes=("a", "b"), per_class=3, seed=1)
    splits = imagefolder_splits(list_imagefolder(tmp_path), 0.2, 0.2, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 16, "val": 6, "test": 4}
    assert all(splits["test"].relpath(i).startswith("train/") for i in range(4))
    assert splits["val"].relpath(0) == "val/a/000.jpg"
