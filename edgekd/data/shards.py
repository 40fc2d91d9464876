"""webdataset tar shards (`data.kind: webdataset`): a folder of .tar files, a glob, or a `pipe:` URL
(brace-expanded: "pipe:curl -s https://host/train-{000..099}.tar"), streamed, never listed whole.

Each sample in a shard is <key>.<image suffix> (jpg, png, webp, ...) plus <key>.cls holding the
class index as text (webdataset's convention); samples without .cls get label -1. Items are
(image tensor, label, index) like SampleDataset, with index = shard number * 2**24 + position in
the shard: stable ids for seeding augmentation and for caches.

Sharding: rank r of w takes shards r, r + w, ... and its DataLoader worker k of m takes every m-th
of those; a rank decodes only its shards. Training shuffles the shard order per epoch (seeded by
seed and epoch) and samples through a buffer seeded by (seed, epoch, rank, worker): the order
depends on the world size and worker count, each sample's augmentation does not. Ranks may see
different sample counts (shards differ in size): give every rank the same number of steps
(e.g. a fixed steps-per-epoch) before training with DDP.
"""

from __future__ import annotations

import glob
import os
import random
from pathlib import Path

import torch

from edgekd.data.datasets import transform_sample
from edgekd.data.decode import BAD_IMAGE_ERRORS, OnBadImage, describe, load_image
from edgekd.errors import DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")
SHARD_STRIDE = 1 << 24  # positions per shard in a sample index


def shard_urls(spec: str) -> list[str]:
    """The shard list of a folder (its *.tar, sorted), a glob, or a (brace-expanded) pipe:/URL spec."""
    if "://" in spec or spec.startswith("pipe:") or "{" in spec:
        from webdataset.shardlists import expand_urls

        urls = expand_urls(spec)
    elif os.path.isdir(spec):
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
    else:
        urls = sorted(glob.glob(spec))
    if not urls:
        raise DataError(f"data.path {spec!r} names no tar shards.",
                        "Give a folder of .tar files, a glob such as /data/train-*.tar, or a pipe: URL.")
    return urls


class ShardDataset(torch.utils.data.IterableDataset):
    def __init__(self, urls: list[str], transform, *, channels: int, short_side: int | None, seed: int = 0,
                 views: int | None = None, on_bad_image: OnBadImage = "error", buffer: int = 1000):
        self.urls, self.transform, self.channels, self.short_side = list(urls), transform, channels, short_side
        self.seed, self.views, self.on_bad_image, self.buffer = seed, views, on_bad_image, buffer
        self.random = not getattr(transform, "deterministic", False)
        self.epoch, self.rank, self.world, self.shuffle = 0, 0, 1, False

    def configure(self, *, rank: int, world_size: int, shuffle: bool) -> None:
        if len(self.urls) < world_size:
            raise DataError(f"{len(self.urls)} shard(s) for {world_size} ranks: some ranks would get no data.",
                            "Write at least as many shards as ranks (better: ranks x workers).")
        self.rank, self.world, self.shuffle = rank, world_size, shuffle

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self) -> list[tuple[int, str]]:
        """(shard number, url) for this rank and DataLoader worker, in this epoch's order."""
        numbered = list(enumerate(self.urls))
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(numbered)
        mine = numbered[self.rank :: self.world]
        info = torch.utils.data.get_worker_info()
        return mine[info.id :: info.num_workers] if info is not None else mine

    def __iter__(self):
        samples = self._raw()
        if self.shuffle:  # shuffle encoded bytes (tens of kB each), not decoded pictures
            info = torch.utils.data.get_worker_info()
            samples = _buffer_shuffle(samples, self.buffer, random.Random(
                f"{self.seed}/{self.epoch}/{self.rank}/{info.id if info else 0}"))
        for data, label, index, where in samples:
            try:
                image = load_image(data, self.channels, self.short_side)
            except BAD_IMAGE_ERRORS as exc:
                if self.on_bad_image == "skip":
                    continue
                raise DataError(f"Cannot read sample {where}: {describe(exc)}.",
                                "Rewrite the shard, or set data.on_bad_image: skip.") from None
            x = transform_sample(self.transform, image, self.random, (self.seed, index, self.epoch), self.views)
            yield x, label, index

    def _raw(self):
        """(image bytes, label, index, 'url:key') of this worker's shards, in shard order."""
        from webdataset import tarfile_samples

        for number, url in self.my_shards():
            for position, sample in enumerate(tarfile_samples([{"url": url}])):
                suffix = next((k for k in IMAGE_KEYS if k in sample), None)
                label = int(sample["cls"].decode().strip()) if "cls" in sample else -1
                data = sample[suffix] if suffix else b""  # no image: decoding b"" fails as a bad image
                yield data, label, number * SHARD_STRIDE + position, f"{url}:{sample['__key__']}"


def _buffer_shuffle(items, size: int, rng: random.Random):
    """webdataset-style shuffle buffer: bounded memory, seeded."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer
