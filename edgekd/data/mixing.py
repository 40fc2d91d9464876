"""Mixup / CutMix on a batch (timm.data.Mixup), with consistent teaching.

`mix_batch` returns ONE mixed input tensor: the training step feeds that same tensor to the
teacher and to the student, so the teacher's targets describe exactly what the student saw
(function matching, Beyer et al. 2022). It runs in the training process (on the device the
batch is on), seeded from (seed, epoch, step): a resumed run mixes exactly as before.

Labels -1 (a sample used without its label) cannot be mixed into a label target: rows whose
own or partner label is -1 get an all-zero target and `labeled` False; the teacher still
teaches them. timm pairs row i with row n-1-i (the batch flipped), so batches must be even:
build the training loader with drop_last=True when mixing.

Two views of one batch (a student with its own input size or channels, issue #16 item 3): `partner` is
the teacher's view of the same rows. Both are mixed with ONE draw of timm's own parameters (lambda, mixup
or CutMix, in timm's order from the same seeded generator): the same partner rows (the batch flipped), the
same lambda, and for CutMix the same box in relative coordinates: drawn by timm's `cutmix_bbox_and_lam` on
the smaller view (whole pixels there) and scaled to each view's side (exact when the sides are multiples),
lambda corrected from the smaller view's box. With one view this is timm's batch-mode mix itself
(tests/pipeline/test_paired_mixing.py checks it bit for bit). Per-pair or per-element modes draw per row
and are not paired: config refuses them with a student view.
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
    partner: object = None  # (N, C', H', W') the teacher's view of the same rows, mixed the same way


def make_mixup(cfg: TrainTransformConfig, num_classes: int, label_smoothing: float = 0.0):
    """A timm Mixup from the config, or None when neither mixup nor cutmix is on."""
    if not cfg.mixing:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                 prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                 label_smoothing=label_smoothing, num_classes=num_classes)


def mix_batch(mixup, inputs, labels, *, seed: int, epoch: int, step: int, partner=None) -> MixedBatch:
    """Mix `inputs` (N, C, H, W) and `labels` (N,) int with `mixup` (from make_mixup), N even.
    Works in place on `inputs` (timm does) and returns that tensor. `partner`: another view of the same
    rows (any size and channels), mixed with the same draw (module doc)."""
    import torch

    if len(inputs) % 2:
        raise ConfigError(f"Mixup/CutMix needs an even batch, got {len(inputs)}.",
                          "Build the training loader with drop_last=True and an even batch_size.")
    known = labels >= 0
    safe = torch.where(known, labels, torch.zeros_like(labels))
    labeled = known & known.flip(0)
    with fork_rngs(derive_seed(seed, epoch, step, 0x6D6978)):  # timm draws lambda and boxes from numpy
        if partner is None:
            inputs, targets = mixup(inputs, safe)
        else:
            (inputs, partner), targets = mix_views(mixup, [inputs, partner], safe)
    targets = torch.where(labeled[:, None], targets, torch.zeros_like(targets))
    return MixedBatch(inputs, targets, labeled, partner)


def mix_views(mixup, views: list, labels):
    """timm's batch-mode mix (Mixup._mix_batch) applied to several views of the same rows with one draw:
    (mixed views, in place; (N, classes) targets from timm's mixup_target). Draws from numpy's global
    generator, as timm does: seed it first (mix_batch does)."""
    from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

    if mixup.mode != "batch":
        raise ConfigError(f"Mixup mode {mixup.mode!r} draws per row; two views of a batch are mixed in batch mode "
                          "only.", "Use distill.train.augment.mixup_mode: batch.")
    lam, use_cutmix = mixup._params_per_batch()  # timm's own draw of lambda and mixup-or-CutMix
    if lam != 1.0 and use_cutmix:
        small = min(views, key=lambda v: v.shape[-1])
        box, lam = cutmix_bbox_and_lam(small.shape, lam, ratio_minmax=mixup.cutmix_minmax,
                                       correct_lam=mixup.correct_lam)
        for view in views:
            yl, yh, xl, xh = _scaled_box(box, small.shape[-2:], view.shape[-2:])
            view[:, :, yl:yh, xl:xh] = view.flip(0)[:, :, yl:yh, xl:xh]
    elif lam != 1.0:
        for view in views:
            flipped = view.flip(0).mul_(1.0 - lam)  # before `view` changes, as timm does
            view.mul_(lam).add_(flipped)
    targets = mixup_target(labels, mixup.num_classes, lam, mixup.label_smoothing)
    return views, targets


def _scaled_box(box, from_hw, to_hw) -> tuple[int, int, int, int]:
    """(yl, yh, xl, xh) in pixels of a from_hw image -> the same relative box in pixels of to_hw (rounded)."""
    (yl, yh, xl, xh), (fh, fw), (th, tw) = box, from_hw, to_hw
    return (round(int(yl) * th / fh), round(int(yh) * th / fh), round(int(xl) * tw / fw), round(int(xh) * tw / fw))

