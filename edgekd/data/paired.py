"""Two views of each sample (a student with its own input size or channels, issue #16 item 3): ONE random
geometry per training row, applied to both models' tensors. Used for data.augment crop / crop_flip and for
distill.train.augment's per-row ops (pad_crop, hflip, vflip), which then replace the per-sample transform.

A row's geometry is a shift of up to `pad` pixels of the larger view (dx, dy, integers there) and a
horizontal (and vertical) flip; each view is shifted by the same fraction of its side (the 16-px teacher by
4 px, the 8-px student by 2 px), with reflection at the border, so teacher and student see the same region
of the sample, each at its own resolution, channels and normalisation, and the teacher's outputs
describe what the student saw. At the larger view's size the shift is exact (whole pixels); a
smaller view is resampled bilinearly (half pixels possible).

    PairedSplit(student_split, teacher_split)   the student's training split (rows of its view) and the
                                                teacher's view of the same rows, row for row
    .batches(..., augment="crop_flip")          (idx, student inputs, labels), like any split; the
                                                teacher's inputs of the same rows, same geometry, in
    .teacher_view(idx)                          the same order (checked), for the trainer to hand the
                                                teacher (mixed with the student's by edgekd.data.mixing)

Draws from a generator seeded per (seed, epoch), like edgekd.data.splitset.augment_batch: a resumed
run sees the same views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgekd.errors import DataError

PAD = 4  # pixels of the larger view, as augment_batch's 4-px padded crop
PAIRED_AUGMENTS = ("crop", "crop_flip")


@dataclass(frozen=True)
class Geometry:
    """What a row's random geometry may be: a shift of up to `pad` px of the larger view, flips with these odds."""

    pad: int = PAD
    hflip: float = 0.0
    vflip: float = 0.0


def geometry_of(augment: str) -> Geometry | None:
    """data.augment crop / crop_flip as a Geometry; None for anything else (no paired shift)."""
    return {"crop": Geometry(PAD), "crop_flip": Geometry(PAD, hflip=0.5)}.get(augment)


def draw_geometry(n: int, geometry: Geometry, generator: torch.Generator, side: int):
    """Per row: (shift as a fraction of the side (n, 2: x, y), hflip (n,) bool, vflip (n,) bool), drawn at the
    larger view's `side`. A flip with odds 0 draws nothing (crop and crop_flip keep their earlier draws)."""
    shift = torch.randint(-geometry.pad, geometry.pad + 1, (n, 2), generator=generator).float() / side

    def flips(odds: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < odds) if odds > 0 else torch.zeros(n, dtype=torch.bool)

    hflip = flips(geometry.hflip)
    return shift, hflip, flips(geometry.vflip)


def apply_geometry(x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor,
                   vflip: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, C, S, S) shifted by shift * S pixels (content moves by -shift: the view looks further right/down)
    with border reflection, then flipped where `flip` (and upside down where `vflip`)."""
    n = len(x)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = 2 * shift.to(x.dtype)  # normalised coordinates span 2 per side
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out[flip] = out[flip].flip(-1)
    if vflip is not None:
        out[vflip] = out[vflip].flip(-2)
    return out


def paired_shift(views: list[torch.Tensor], augment: str | Geometry | None,
                 generator: torch.Generator) -> list[torch.Tensor]:
    """The same geometry per row for every view (same rows, same order; any sizes and channels). `augment`:
    data.augment's name (crop, crop_flip; anything else: unchanged) or a Geometry (train.augment's)."""
    geometry = augment if isinstance(augment, Geometry) else geometry_of(augment)
    if geometry is None:
        return views
    side = max(v.shape[-1] for v in views)
    shift, flip, vflip = draw_geometry(len(views[0]), geometry, generator, side)
    return [apply_geometry(v.float(), shift, flip, vflip) for v in views]


class PairedSplit:
    """The student's training split whose batches carry the teacher's view of the same rows (see module doc).
    Everything else (labels, len, take, stack, ...) is the student split's.

    `pictures`: (source, transform) for data.augment timm on image files: training batches then come from ONE
    decode of each sample per step, `transform` (edgekd.data.transforms.PairedTrainTransform, seeded per
    (seed, sample, epoch) in the loader's workers) making the student's and the teacher's tensors of one timm
    crop; `source` reads the picture at the larger view's resolution (its SampleDataset source)."""

    def __init__(self, student, teacher, pictures: tuple | None = None):
        if len(student) != len(teacher):
            raise DataError(f"The student's training split has {len(student)} rows, the teacher's view "
                            f"{len(teacher)}.", "This is a bug: report it.")
        self.student, self.teacher, self.pictures = student, teacher, pictures
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getattr__(self, name):
        return getattr(self.__dict__["student"], name)

    def __len__(self) -> int:
        return len(self.student)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, augment: str = "none",
                geometry: Geometry | None = None, transform=None, **kwargs):
        """`geometry` (train.augment's pad_crop/hflip/vflip) replaces `augment` crop/crop_flip, as a
        per-sample `transform` does on one view; a per-sample transform itself cannot be paired (it would
        draw each view's geometry apart): the trainer passes a Geometry instead. augment 'timm': the
        batches of `pictures` (class doc), then `geometry` if given."""
        from edgekd.data.splitset import Batches, _augment_generator

        if transform is not None:
            raise DataError("A per-sample transform was asked of a paired split: each view would draw its own "
                            "geometry.", "This is a bug: report it (pass a Geometry).")
        if shuffle and augment == "timm":
            rows, count = self._picture_batches(batch_size, seed, **kwargs)
        else:
            rows, count = self._stacked_batches(batch_size, shuffle, seed, **kwargs)
        geometry = geometry or geometry_of(augment)

        def one_epoch(epoch: int):
            generator = _augment_generator(seed, epoch)
            for idx, x, teacher_x, y in rows(epoch):
                if shuffle:
                    x, teacher_x = paired_shift([x, teacher_x], geometry, generator)
                self._last = (idx.clone(), teacher_x)
                yield idx, x, y

        return Batches(one_epoch, count)

    def _stacked_batches(self, batch_size: int, shuffle: bool, seed: int, **kwargs):
        """(idx, student x, teacher x, y) per batch: the student split's batches, the teacher's rows stacked."""
        inner = self.student.batches(batch_size, shuffle=shuffle, seed=seed, augment="none", **kwargs)

        def rows(epoch: int):
            for idx, x, y in inner.epoch(epoch):
                yield idx, x, torch.from_numpy(self.teacher.stack(idx.numpy())), y

        return rows, len(inner)

    def _picture_batches(self, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1, **_):
        """(idx, student x, teacher x, y) per batch: both views of one timm crop per sample (class doc)."""
        from edgekd.data.datasets import SampleDataset
        from edgekd.data.loader import epoch_batches, make_loader
        from edgekd.data.splitset import _Rows

        if self.pictures is None:
            raise DataError("augment 'timm' needs the paired split's picture transform.", "This is a bug: report it.")
        source, transform = self.pictures
        dataset = SampleDataset(source, transform, seed=seed)  # each sample's crop: (seed, sample, epoch)
        loader = make_loader(_Rows(dataset, self.student.rows, self.student.labels), batch_size, train=True,
                             seed=seed, workers=self.student.workers, device=self.student.device, rank=rank,
                             world_size=world_size)

        def rows(epoch: int):
            for (x, teacher_x), y, idx in epoch_batches(loader, epoch):
                yield idx, x, teacher_x, y

        return rows, len(loader.sampler)

    def teacher_view(self, idx: torch.Tensor) -> torch.Tensor:
        """The teacher's inputs of the batch just yielded: the same rows (`idx`), order and geometry."""
        if self._last is None or not torch.equal(self._last[0], idx.cpu()):
            raise DataError("The live teacher asked for rows that are not the student's current batch.",
                            "This is a bug: report it.")
        return self._last[1]
