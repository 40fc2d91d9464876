"""Training views of samples: `train.augment` applied through edgekd.data.

Per sample, the small-array transform of edgekd.data.transforms (reflect-padded random crop, flips,
timm RandomErasing) on the tensor the split's own transform made (the eval transform; timm's picture
transform with data.augment: timm). It runs in the DataLoader workers that read the split
(`split.batches(transform=views.sample)`), seeded per (seed, sample, epoch), or per (seed, sample,
epoch mod K) with a K-view teacher replay cache (edgekd.distill.replay): a view is the same in any
worker, process or resumed run. With mixup or cutmix, edgekd.data.mixing then mixes the collated
batch on the training device (one batched op, seeded from (seed, epoch, step)): ONE tensor, which
the trainer hands to the teacher and to the student alike (function matching), with soft
(N, classes) targets for the label-reading losses.

With a student of its own input (a PairedSplit, edgekd.data.paired) the per-sample transform is not
used: its geometry (pad_crop, hflip, vflip) is drawn once per row for both views (`geometry`), and
mixup/cutmix mixes the teacher's view with the same draw (`mix_views`); random erasing, which would
draw a box per view, is refused by config there.

The tensors here are already normalised by the data layer, so the transform normalises with
mean 0 / std 1 (a no-op); erasing with `re_mode: const` writes 0, the mean colour, as timm does
on normalised tensors.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from edgekd.data import Preprocess
from edgekd.data.mixing import make_mixup, mix_batch
from edgekd.data.paired import Geometry
from edgekd.data.transforms import IMAGE_ONLY_KEYS, TrainTransformConfig, array_train_transform
from edgekd.errors import ModelError


class BatchViews:
    def __init__(self, cfg: TrainTransformConfig, *, channels: int, input_size: int, num_classes: int, seed: int):
        identity = Preprocess(input_size=input_size, channels=channels, mean=(0.0,) * channels,
                              std=(1.0,) * channels, pixel_max=1.0)
        # only the keys arrays use count as given (a config rebuilt from a dump has every key set)
        self.sample = SampleView(array_train_transform(
            TrainTransformConfig(**cfg.model_dump(exclude=set(IMAGE_ONLY_KEYS))), identity))
        self.mixup = make_mixup(cfg, num_classes)  # label smoothing stays with the loss
        self.seed = seed
        # the per-row geometry of the sample transform, drawn once for two views of a row (edgekd.data.paired)
        self.geometry = Geometry(cfg.pad_crop, hflip=cfg.hflip, vflip=cfg.vflip)

    @property
    def mixing(self) -> bool:
        return self.mixup is not None

    def usable(self, idx: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor):
        """The rows of a batch (idx, inputs, labels) the step trains on: mixup pairs row i with row
        n-1-i, so a mixed batch must be even and an odd last batch loses its last sample (one per
        epoch at most)."""
        if not self.mixing or len(idx) % 2 == 0:
            return idx, inputs, labels
        keep = len(idx) - 1
        return idx[:keep], inputs[:keep], labels[:keep]

    def mix(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
        """(inputs, labels) -> (mixed inputs, (B, classes) soft targets); unchanged without mixing."""
        if not self.mixing:
            return inputs, labels
        batch = mix_batch(self.mixup, inputs, labels, seed=self.seed, epoch=epoch, step=step)
        return batch.inputs, batch.targets

    def mix_views(self, inputs: torch.Tensor, labels: torch.Tensor, partner: torch.Tensor, epoch: int, step: int):
        """`mix` with the teacher's view of the same rows (`partner`) mixed by the same draw:
        (inputs, labels, partner); unchanged without mixing."""
        if not self.mixing:
            return inputs, labels, partner
        batch = mix_batch(self.mixup, inputs, labels, seed=self.seed, epoch=epoch, step=step, partner=partner)
        return batch.inputs, batch.targets, batch.partner


class SampleView:
    """One sample's view (C, H, W) -> (C, H, W); random (edgekd.data.datasets seeds it per sample).
    In a DataLoader worker torch already runs on one thread; in the training process (workers: 0)
    the per-sample ops are kept off the intra-op pool."""

    deterministic = False

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, sample: torch.Tensor) -> torch.Tensor:
        if torch.get_num_threads() == 1:
            return self.transform(sample)
        with _one_thread():
            return self.transform(sample)


@contextmanager
def _one_thread():
    """Per-sample ops on a 32-px image take microseconds; waking an intra-op thread pool for each
    costs milliseconds on a busy CPU (reflect pad: 3 us on one thread, 17 ms on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_views(cfg, split, model: torch.nn.Module, seed: int) -> BatchViews | None:
    """The views `cfg.augment` asks for (a TrainConfig) on the samples of `split` (edgekd.data.splitset), or None."""
    if cfg.augment is None:
        return None
    sample_shape = split.sample_shape  # (C, H, W); a streamed split decodes one sample to know it
    return BatchViews(cfg.augment, channels=sample_shape[0], input_size=sample_shape[-1],
                      num_classes=_classes(model), seed=seed)


def _classes(model: torch.nn.Module) -> int:
    """timm models carry num_classes; mixup needs it for its one-hot targets."""
    classes = getattr(model, "num_classes", None)
    if not isinstance(classes, int) or classes < 1:
        raise ModelError(f"{type(model).__name__} has no num_classes attribute, which mixup/cutmix need.",
                         "Use a timm model, or train without train.augment mixup/cutmix.")
    return classes
