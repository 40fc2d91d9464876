import pytest

from edgekd.errors import ConfigError
from edgekd.synth import parse_settings

# The published recipes (edgekd/synth/settings.py names each source).
PUBLISHED = {
    "deepinversion": {"batch_size": 256, "iterations": 2000, "lr": 0.05, "bn": 10.0, "tv_l2": 2.5e-5, "l2": 0.0,
                      "jitter": 2, "betas": (0.9, 0.999), "competition": 0.0},
    "deepinversion_imagenet": {"iterations": 2000, "lr": 0.25, "betas": (0.5, 0.9), "bn": 0.01,
                               "first_bn_multiplier": 10.0, "tv_l2": 1e-4, "l2": 1e-5, "jitter": 30, "flip": True,
                               "clip": True, "warmup": 100, "lr_schedule": "cosine"},
    "zskt": {"rounds": 80_000, "batch_size": 128, "z_dim": 100, "generator_lr": 1e-3, "student_lr": 2e-3,
             "generator_steps": 1, "student_steps": 10, "temperature": 1.0, "attention": 250.0, "grad_clip": 5.0,
             "adversarial": 1.0, "schedule": "cosine"},
    "dafl": {"rounds": 24_000, "batch_size": 512, "z_dim": 100, "generator_lr": 0.2, "student_lr": 2e-3,
             "one_hot": 1.0, "entropy": 5.0, "activation": 0.1, "adversarial": 0.0, "tanh": True},
}


@pytest.mark.parametrize("method", PUBLISHED)
def test_defaults_are_the_published_recipes(method):
    settings = parse_settings({"method": method})
    assert {k: getattr(settings, k) for k in PUBLISHED[method]} == PUBLISHED[method]


def test_overrides_are_checked_and_misspellings_named():
    assert parse_settings({"method": "zskt", "rounds": 10}).rounds == 10
    with pytest.raises(ConfigError, match="did you mean 'rounds'"):
        parse_settings({"method": "zskt", "rouds": 10})
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        parse_settings({"method": "deepinversion", "iterations": 0})
    with pytest.raises(ConfigError, match="every generator loss weight is 0"):
        parse_settings({"method": "dafl", "one_hot": 0, "entropy": 0, "activation": 0})
    with pytest.raises(ConfigError, match="one of: deepinversion, deepinversion_imagenet, zskt, dafl"):
        parse_settings({"method": "gan"})
