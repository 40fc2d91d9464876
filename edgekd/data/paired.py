"""data.augment crop / crop_flip with two views of each sample (a student with its own input size or
channels, issue #16 item 3): ONE random geometry per training row, applied to both models' tensors.

A row's geometry is a shift of up to PAD pixels of the larger view (dx, dy, integers there) and a
horizontal flip; each view is shifted by the same fraction of its side (the 16-px teacher by 4 px,
the 8-px student by 2 px), with reflection at the border, so teacher and student see the same region
of the sample, each at its own resolution, channels and normalisation, and the teacher's outputs
describe what the student saw. At the larger view's size the shift is exact (whole pixels); a
smaller view is resampled bilinearly (half pixels possible).

    PairedSplit(student_split, teacher_split)   the student's training split (rows of its view) and the
                                                teacher's view of the same rows, row for row
    .batches(..., augment="crop_flip")          (idx, student inputs, labels), like any split; the
                                                teacher's inputs of the same rows, same geometry, in
    .teacher_view(idx)                          the same order (checked), for the live teacher

Draws from a generator seeded per (seed, epoch), like edgekd.data.splitset.augment_batch: a resumed
run sees the same views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.errors import DataError

PAD = 4  # pixels of the larger view, as augment_batch's 4-px padded crop
PAIRED_AUGMENTS = ("crop", "crop_flip")


def draw_geometry(n: int, augment: str, generator: torch.Generator, side: int):
    """Per row: (shift as a fraction of the side (n, 2: x, y), flip (n,) bool), drawn at the larger view's `side`."""
    shift = torch.randint(-PAD, PAD + 1, (n, 2), generator=generator).float() / side
    flip = (torch.rand(n, generator=generator) < 0.5) if augment == "crop_flip" else torch.zeros(n, dtype=torch.bool)
    return shift, flip


def apply_geometry(x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """x (N, C, S, S) shifted by shift * S pixels (content moves by -shift: the view looks further right/down)
    with border reflection, then flipped where `flip`."""
    n = len(x)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = 2 * shift.to(x.dtype)  # normalised coordinates span 2 per side
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out[flip] = out[flip].flip(-1)
    return out


def paired_shift(views: list[torch.Tensor], augment: str, generator: torch.Generator) -> list[torch.Tensor]:
    """The same geometry per row for every view (same rows, same order; any sizes and channels)."""
    if augment not in PAIRED_AUGMENTS:
        return views
    side = max(v.shape[-1] for v in views)
    shift, flip = draw_geometry(len(views[0]), augment, generator, side)
    return [apply_geometry(v.float(), shift, flip) for v in views]


class PairedSplit:
    """The student's training split whose batches carry the teacher's view of the same rows (see module doc).
    Everything else (labels, len, take, stack, ...) is the student split's."""

    def __init__(self, student, teacher):
        if len(student) != len(teacher):
            raise DataError(f"The student's training split has {len(student)} rows, the teacher's view "
                            f"{len(teacher)}.", "This is a bug: report it.")
        self.student, self.teacher = student, teacher
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getattr__(self, name):
        return getattr(self.__dict__["student"], name)

    def __len__(self) -> int:
        return len(self.student)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, augment: str = "none", **kwargs):
        from edgekd.data.splitset import Batches, _augment_generator

        inner = self.student.batches(batch_size, shuffle=shuffle, seed=seed, augment="none", **kwargs)

        def one_epoch(epoch: int):
            generator = _augment_generator(seed, epoch)
            for idx, x, y in inner.epoch(epoch):
                teacher_x = torch.from_numpy(self.teacher.stack(idx.numpy()))
                if shuffle:
                    x, teacher_x = paired_shift([x, teacher_x], augment, generator)
                self._last = (idx.clone(), teacher_x)
                yield idx, x, y

        return Batches(one_epoch, len(inner))

    def teacher_view(self, idx: torch.Tensor) -> torch.Tensor:
        """The teacher's inputs of the batch just yielded: the same rows (`idx`), order and geometry."""
        if self._last is None or not torch.equal(self._last[0], idx.cpu()):
            raise DataError("The live teacher asked for rows that are not the student's current batch.",
                            "This is a bug: report it.")
        return self._last[1]
