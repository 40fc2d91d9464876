"""Named recipes expand into ordinary keys, each overridable, and the rules around them hold at load."""

import pytest

from edgekd.config import CompressConfig
from edgekd.distill.recipes import DISTILL_RECIPES, TEACHER_RECIPES, merge
from edgekd.errors import ConfigError
from edgekd.schema import parse


def _load(data: dict) -> CompressConfig:
    return parse(CompressConfig, data, "test")


def test_standard_recipes_are_the_plain_defaults():
    assert TEACHER_RECIPES["standard"] == {} and DISTILL_RECIPES["standard"] == {}
    assert _load({"distill": {"recipe": "standard"}, "teacher": {"recipe": "standard"}}) == _load({})


def test_function_matching_sets_kl_only_shared_mixing_ema_and_a_long_schedule():
    d = _load({"distill": {"recipe": "function_matching"}}).distill
    (kd,) = d.losses
    assert (kd.kind, kd.alpha, kd.temperature) == ("kd", 1.0, 1.0)  # KL to the teacher, nothing from labels
    assert d.train.ema and d.train.ema_decay == 0.999
    assert d.train.augment.mixup == 1.0 and d.train.augment.cutmix == 1.0 and d.train.mixing
    assert d.train.epochs == 100 and d.recipe == "function_matching"


def test_strong_teacher_sets_sgd_smoothing_erasing_and_ema():
    t = _load({"teacher": {"recipe": "strong"}}).teacher.train
    assert (t.optimizer, t.lr, t.momentum, t.label_smoothing) == ("sgd", 0.05, 0.9, 0.1)
    assert t.augment.re_prob == 0.5 and t.augment.pad_crop == 4 and t.augment.hflip == 0.5
    assert t.ema and t.epochs == 30 and not t.mixing


def test_every_key_a_recipe_sets_stays_overridable():
    d = _load({"distill": {"recipe": "function_matching",
                           "losses": [{"kind": "kd", "alpha": 1.0, "temperature": 4.0}],
                           "train": {"epochs": 7, "ema": False, "augment": {"cutmix": 0.0}}}}).distill
    assert d.losses[0].temperature == 4.0 and d.train.epochs == 7 and not d.train.ema
    assert d.train.augment.cutmix == 0.0 and d.train.augment.mixup == 1.0  # nested keys merge one by one
    assert d.train.lr == 3e-3  # what was not overridden is the recipe's
    t = _load({"teacher": {"recipe": "strong", "train": {"optimizer": "adamw", "lr": 1e-3}}}).teacher.train
    assert (t.optimizer, t.lr, t.label_smoothing) == ("adamw", 1e-3, 0.1)


def test_a_recipe_holds_for_the_primary_of_several_teachers():
    # `teacher` is rebuilt from teachers[0]'s dump (every key set): the rules must not misread that
    config = _load({"teachers": [{"recipe": "strong"}, {"model": "resnet18"}]})
    assert config.teacher.train.augment.re_prob == 0.5 and config.teacher.train.ema
    assert config.teachers[1].train == _load({}).teacher.train


def test_merge_replaces_lists_and_merges_dicts():
    assert merge({"a": {"x": 1, "y": 2}, "l": [1, 2]}, {"a": {"y": 3}, "l": [9]}) == {"a": {"x": 1, "y": 3}, "l": [9]}


@pytest.mark.parametrize("data, match", [
    ({"distill": {"recipe": "nope"}}, "recipe"),
    ({"distill": {"recipe": "function_matching", "scheme": "online"}}, "scheme: online has none"),
    ({"distill": {"recipe": "function_matching", "losses": [{"kind": "dkd"}]}}, "one target class"),
    ({"distill": {"recipe": "function_matching", "unlabeled_fraction": 0.5,
                  "losses": [{"kind": "kd", "alpha": 0.5}]}}, "teacher only"),
    ({"distill": {"train": {"ema_decay": 0.99}}}, "ema_decay applies to ema: true"),
    ({"teacher": {"train": {"augment": {"auto_augment": "rand-m9-mstd0.5"}}}}, "need decoded pictures"),
    ({"distill": {"qat": {"ema": True}}}, "qat.ema and qat.augment are not supported"),
    ({"distill": {"scheme": "online", "train": {"ema": True}}}, "own loop"),
    # the K-view teacher replay cache (edgekd.distill.replay)
    ({"distill": {"replay_views": 4}}, "no per-sample augmentation"),
    ({"distill": {"replay_views": 4, "recipe": "function_matching", "teacher_cache": False}},
     "replay is a teacher cache"),
    ({"distill": {"replay_views": 4, "recipe": "function_matching", "losses": [{"kind": "at"}]}}, "teacher internals"),
    ({"distill": {"replay_views": 4, "recipe": "function_matching", "losses": [{"kind": "ce"}]}}, "nothing to replay"),
    ({"distill": {"replay_topk": 5}}, "replay_topk 5 says what the replay cache stores, but replay_views is 0"),
    ({"distill": {"replay_views": 4, "recipe": "function_matching", "replay_topk": -1}}, "replay_topk"),
])
def test_rules_are_checked_at_load(data, match):
    with pytest.raises(ConfigError, match=match):
        _load(data)


def test_function_matching_with_unlabeled_samples_is_fine_when_no_loss_reads_labels():
    d = _load({"distill": {"recipe": "function_matching", "unlabeled_fraction": 0.5}}).distill
    assert d.unlabeled_fraction == 0.5


def test_function_matching_combines_with_timm_picture_transforms_and_the_replay_cache():
    c = _load({"data": {"kind": "imagefolder", "path": ".", "augment": "timm"},
               "distill": {"recipe": "function_matching", "replay_views": 4}, "teacher": {"recipe": "strong"}})
    assert c.distill.train.mixing and c.distill.replay_views == 4 and c.teacher.train.augment.re_prob == 0.5
    assert _load({"data": {"kind": "imagefolder", "path": ".", "augment": "timm"},
                  "distill": {"replay_views": 2}}).distill.replay_views == 2  # timm's views alone


def test_ema_and_train_augment_load_with_streamed_images_when_data_augment_is_not_timm():
    c = _load({"data": {"kind": "imagefolder", "path": ".", "augment": "crop_flip"},
               "distill": {"recipe": "function_matching"}, "teacher": {"train": {"ema": True}}})
    assert c.distill.train.mixing and c.teacher.train.ema
