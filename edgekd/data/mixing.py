"""Mixup / CutMix on a batch (timm.data.Mixup), with consistent teaching.

`mix_batch` returns ONE mixed input tensor: the training step feeds that same tensor to the
teacher and to the student, so the teacher's targets describe exactly what the student saw
(function matching, Beyer et al. 2022). It runs in the training process (on the device the
batch is on), seeded from (seed, epoch, step): a resumed run mixes exactly as before.

Labels -1 (a sample used without its label) cannot be mixed into a label target: rows whose
own or partner label is -1 get an all-zero target and `labeled` False; the teacher still
teaches them. timm pairs row i with row n-1-i (the batch flipped), so batches must be even:
build the training loader with drop_last=True when mixing.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.data.seeding import derive_seed, fork_rngs
from edgekd.data.transforms import TrainTransformConfig
from edgekd.errors import ConfigError


@dataclass
class MixedBatch:
    inputs: object  # (N, C, H, W) tensor: the one batch both teacher and student see
    targets: object  # (N, classes) float soft labels (mixed, smoothed)
    labeled: object  # (N,) bool: both labels of the row known


def make_mixup(cfg: TrainTransformConfig, num_classes: int, label_smoothing: float = 0.0):
    """A timm Mixup from the config, or None when neither mixup nor cutmix is on."""
    if not cfg.mixing:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                 prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                 label_smoothing=label_smoothing, num_classes=num_classes)


def mix_batch(mixup, inputs, labels, *, seed: int, epoch: int, step: int) -> MixedBatch:
    """Mix `inputs` (N, C, H, W) and `labels` (N,) int with `mixup` (from make_mixup), N even.
    Works in place on `inputs` (timm does) and returns that tensor."""
    import torch

    if len(inputs) % 2:
        raise ConfigError(f"Mixup/CutMix needs an even batch, got {len(inputs)}.",
                          "Build the training loader with drop_last=True and an even batch_size.")
    known = labels >= 0
    safe = torch.where(known, labels, torch.zeros_like(labels))
    labeled = known & known.flip(0)
    with fork_rngs(derive_seed(seed, epoch, step, 0x6D6978)):  # timm draws lambda and boxes from numpy
        inputs, targets = mixup(inputs, safe)
    targets = torch.where(labeled[:, None], targets, torch.zeros_like(targets))
    return MixedBatch(inputs, targets, labeled)

