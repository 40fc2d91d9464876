"""The student's share of the training split and its unlabeled part: seeded, stratified, disjoint."""

import numpy as np

from edgekd.data import student_split

LABELS = np.repeat(np.arange(4), [100, 50, 10, 1])  # unbalanced, one class with a single sample


def test_the_whole_split_with_labels_by_default():
    split = student_split(LABELS, 1.0, 0.0, seed=0)
    assert np.array_equal(split.rows, np.arange(len(LABELS))) and not split.unlabeled.any()
    assert split.summary() == {"train_split": 161, "samples": 161, "labeled": 161, "unlabeled": 0}


def test_fractions_are_per_class_and_every_class_keeps_a_label():
    split = student_split(LABELS, 0.5, 0.5, seed=3)
    y = LABELS[split.rows]
    assert [int((y == c).sum()) for c in range(4)] == [50, 25, 5, 1]  # at least one sample per class
    unlabeled = LABELS[split.unlabeled_rows]
    assert [int((unlabeled == c).sum()) for c in range(4)] == [25, 12, 2, 0]  # round(n/2); one label kept
    assert split.summary()["unlabeled"] == 39


def test_same_seed_same_split_and_the_fractions_draw_independently():
    a, b = student_split(LABELS, 0.3, 0.4, seed=7), student_split(LABELS, 0.3, 0.4, seed=7)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.unlabeled, b.unlabeled)
    assert not np.array_equal(a.rows, student_split(LABELS, 0.3, 0.4, seed=8).rows)
    assert np.array_equal(a.rows, student_split(LABELS, 0.3, 0.0, seed=7).rows)  # unlabeled share: same subset
