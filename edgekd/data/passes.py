"""A parallel pass over a FileList's images, in file order: checking them, building the cache.

DataLoader workers decode (`workers` processes, 0 = in this process); the results come back
in file order, so the caller can write them sequentially and checkpoint how far it got.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekd.data.decode import BAD_IMAGE_ERRORS, BadImage, OnBadImage, bad_image_policy, describe, load_image
from edgekd.data.listing import FileList
from edgekd.ui import progress_of


class _Decode:
    """Map-style dataset: i -> (i, work(path) or None, BadImage or None)."""

    def __init__(self, files: FileList, work):
        self.files, self.work = files, work

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.work(self.files.path(i)), None
        except BAD_IMAGE_ERRORS as exc:
            return i, None, BadImage(self.files.relpath(i), describe(exc))


def decode_pass(files: FileList, work, *, workers: int | None = None, start: int = 0, ui=None,
                description: str = "decoding", batch: int = 16):
    """Yield (i, result, bad) for files start..N-1 in order; `work(path)` runs in the workers (picklable)."""
    import torch
    from torch.utils.data import DataLoader

    from edgekd.data.loader import default_workers

    workers = default_workers() if workers is None else workers
    loader = DataLoader(_Decode(files, work), batch_size=batch, sampler=range(start, len(files)),
                        num_workers=workers, collate_fn=list, prefetch_factor=4 if workers else None,
                        generator=torch.Generator())  # leaves the global generator alone
    with progress_of(ui, description, len(files) - start, "images") as advance:
        for chunk in loader:
            yield from chunk
            advance(len(chunk))


@dataclass(frozen=True)
class _Check:
    channels: int
    short_side: int | None

    def __call__(self, path):
        load_image(path, self.channels, self.short_side)


def check_images(files: FileList, channels: int, short_side: int | None, on_bad_image: OnBadImage, *,
                 workers: int | None = None, ui=None) -> tuple[FileList, list[BadImage]]:
    """Decode every image once (draft mode down to `short_side`) before any training.
    error: DataError listing every bad file. skip: the files without them, and the list."""
    bad = [b for _, _, b in decode_pass(files, _Check(channels, short_side), workers=workers, ui=ui,
                                        description="checking images") if b is not None]
    bad_image_policy(bad, on_bad_image, str(files.root))
    if not bad:
        return files, []
    dropped = {b.path for b in bad}
    keep = np.array([i for i in range(len(files)) if files.relpath(i) not in dropped], dtype=np.int64)
    return files.subset(keep), bad
