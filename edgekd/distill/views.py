"""Training views of batches: `train.augment` applied through edgekd.data.

Per sample, the small-array transform of edgekd.data.transforms (reflect-padded random crop,
flips, timm RandomErasing), with the generators seeded once per step from (seed, epoch, step)
(edgekd.data.seeding): the epoch's order is seeded too, so a resumed run draws exactly the
views the uninterrupted one would. Seeding per sample, as edgekd.data.datasets does in
DataLoader workers, costs ~10x the transform itself here (three generator reseeds per 32-px
image: ~0.8 ms vs 0.08 ms on a 2-core CPU), so this in-process path seeds per step. With mixup
or cutmix, edgekd.data.mixing then mixes the batch, seeded from (seed, epoch, step): ONE tensor,
which the trainer hands to the teacher and to the student alike (function matching), with soft
(N, classes) targets for the label-reading losses.

The batches come from edgekd.data.splitset without data.augment (in-memory digits/idx tensors, or
imagefolder samples streamed through the eval transform), so the views are drawn from the same
un-augmented inputs whatever the kind. The tensors here are already normalised by the data layer, so the transform normalises with
mean 0 / std 1 (a no-op); erasing with `re_mode: const` writes 0, the mean colour, as timm does
on normalised tensors.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from edgekd.data import Preprocess
from edgekd.data.mixing import make_mixup, mix_batch
from edgekd.data.seeding import derive_seed, fork_rngs
from edgekd.data.transforms import IMAGE_ONLY_KEYS, TrainTransformConfig, array_train_transform
from edgekd.errors import ModelError


class BatchViews:
    def __init__(self, cfg: TrainTransformConfig, *, channels: int, input_size: int, num_classes: int, seed: int):
        identity = Preprocess(input_size=input_size, channels=channels, mean=(0.0,) * channels,
                              std=(1.0,) * channels, pixel_max=1.0)
        # only the keys arrays use count as given (a config rebuilt from a dump has every key set)
        self.transform = array_train_transform(
            TrainTransformConfig(**cfg.model_dump(exclude=set(IMAGE_ONLY_KEYS))), identity)
        self.mixup = make_mixup(cfg, num_classes)  # label smoothing stays with the loss
        self.seed = seed

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

    def augment(self, batch: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """(B, C, H, W) views of the un-augmented `batch` (B, C, H, W) in `epoch`, step `step`."""
        with fork_rngs(derive_seed(self.seed, epoch, step, VIEWS_STREAM)), _one_thread():
            return torch.stack([self.transform(sample) for sample in batch])

    def mix(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
        """(inputs, labels) -> (mixed inputs, (B, classes) soft targets); unchanged without mixing."""
        if not self.mixing:
            return inputs, labels
        batch = mix_batch(self.mixup, inputs, labels, seed=self.seed, epoch=epoch, step=step)
        return batch.inputs, batch.targets


VIEWS_STREAM = 0x76696577  # keeps these seeds apart from mixing's (seed, epoch, step, 'mix')


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
