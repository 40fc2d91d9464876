"""webdataset tar shards as a file list (`data.kind: webdataset`): listed from the tar headers, read
per sample by offset, so every stage, the uint8 cache, DataLoader workers and torchrun strides treat
them exactly as ImageFolder files.

    data.shards: /data/shards              a folder: *.tar (one pool, splits carved), or train/, val/
                                           [, test/] subfolders of *.tar (the folders are the splits)
                 /data/train-*.tar         a glob (one pool)
                 pipe:curl -s https://host/train-{000..099}.tar    a brace-expanded pipe: or URL list

A sample is webdataset's: the members of one shard sharing a key (the member name up to the first
dot of its base name), one image (<key>.jpg|png|webp|...) and its class index as text (<key>.cls).
Class names come from classes.txt (one per line) in the shard folder; without it they are the
indices. Listing reads the tar headers and the few-byte .cls members, never an image; a local
shard is read in place. A pipe:/URL shard cannot be read at an offset, so the data stage streams
each one once into the cache folder (`cache_root/shards-<hash of the URL list>/`, one finished
copy per shard: an interrupted copy resumes at the next shard) and lists the copies.

Identity (what `dataset_identity` hashes): per sample "<shard>/<member>", its size, its shard's
mtime and its label: a rewritten shard re-runs what reads its split. URL shards have no mtime:
their identity is the URL list and the copies' sizes (re-fetch by deleting the shards-* folder).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.data.listing import FileList, Listing, _pack
from edgekd.data.shards import IMAGE_KEYS, shard_urls
from edgekd.errors import DataError
from edgekd.ui import progress_of

SPLIT_FOLDERS = ("train", "val", "test")
CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class TarList(FileList):
    """A FileList whose files are tar members: sample i is `member_sizes`... bytes at `data_offsets[i]`
    of shard `shard_paths[shard_index[i]]`. `path(i)` returns those bytes (what `load_image` reads in
    place of a path); `relpath(i)` is "<shard name>/<member name>" (errors, identity, skip lists)."""

    shard_paths: tuple[str, ...] = ()
    shard_index: np.ndarray = None  # int64, N
    data_offsets: np.ndarray = None  # int64, N

    def path(self, i: int) -> bytes:
        fd = os.open(self.shard_paths[int(self.shard_index[i])], os.O_RDONLY)
        try:  # one open per sample, like an image file: safe in forked workers, nothing held between reads
            return os.pread(fd, int(self.sizes[i]), int(self.data_offsets[i]))
        finally:
            os.close(fd)

    def subset(self, rows: np.ndarray) -> "TarList":
        rows = np.asarray(rows, dtype=np.int64)
        part = FileList.subset(self, rows)
        return TarList(part.root, part.classes, part.blob, part.offsets, part.labels, part.sizes, part.mtimes,
                       self.shard_paths, self.shard_index[rows], self.data_offsets[rows])


def is_remote(spec: str) -> bool:
    return spec.startswith("pipe:") or "://" in spec


def list_shards(spec: str, cache_root: Path, ui=None) -> Listing:
    """The shards' samples as a Listing (folders "all", or "train"/"val"/"test"), nothing decoded."""
    folder = Path(spec) if not is_remote(spec) and os.path.isdir(spec) else None
    if folder is not None and any((folder / name).is_dir() for name in SPLIT_FOLDERS):
        groups = {name: shard_urls(str(folder / name)) for name in SPLIT_FOLDERS if (folder / name).is_dir()}
        if "train" not in groups:
            raise DataError(f"{folder} has split folders but no train/.", "Put the training shards in train/.")
    else:
        groups = {"all": shard_urls(spec)}
    if is_remote(spec):
        groups = {name: localise(urls, cache_root, ui) for name, urls in groups.items()}
    lists = {name: _list_group(urls, ui) for name, urls in groups.items()}
    root = folder or Path(next(iter(groups.values()))[0]).parent  # classes.txt lives here
    classes = _class_names(root, lists)
    return Listing(root, tuple(classes), {name: _with_classes(files, classes) for name, files in lists.items()})


def localise(urls: list[str], cache_root: Path, ui=None) -> list[str]:
    """Copy each pipe:/URL shard once into the cache folder (streamed, never whole in memory)."""
    from webdataset import gopen

    target = Path(cache_root) / f"shards-{hashlib.sha256(chr(10).join(urls).encode()).hexdigest()[:16]}"
    target.mkdir(parents=True, exist_ok=True)
    paths = [target / f"{k:06d}.tar" for k in range(len(urls))]
    with progress_of(ui, f"copying {len(urls)} shards to {target}", len(urls), "shards") as advance:
        for url, path in zip(urls, paths):
            if not path.is_file():
                partial = path.with_name(path.name + ".partial")
                with gopen(url, "rb") as src, open(partial, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                partial.replace(path)
            advance()
    return [str(p) for p in paths]


def _list_group(paths: list[str], ui) -> TarList:
    relpaths, sizes, mtimes, labels, shard_index, data_offsets = [], [], [], [], [], []
    with progress_of(ui, f"listing {len(paths)} shards", len(paths), "shards") as advance:
        for number, path in enumerate(paths):
            mtime = os.stat(path).st_mtime_ns
            for name, size, offset, label in _samples(path):
                relpaths.append(f"{Path(path).name}/{name}")
                sizes.append(size), mtimes.append(mtime), labels.append(label)
                shard_index.append(number), data_offsets.append(offset)
            advance()
    if not relpaths:
        raise DataError(f"The shards {_shown(paths)} hold no images.", f"Write <key>.jpg (or {', '.join(IMAGE_KEYS)}) "
                        "and <key>.cls members (webdataset's TarWriter does).")
    files = _pack(Path(paths[0]).parent, (), relpaths, sizes, mtimes, labels)
    return TarList(files.root, files.classes, files.blob, files.offsets, files.labels, files.sizes, files.mtimes,
                   tuple(paths), np.asarray(shard_index, dtype=np.int64), np.asarray(data_offsets, dtype=np.int64))


def _samples(path: str):
    """(image member name, size, data offset, label) per sample of one tar, from its headers."""
    found: dict[str, dict] = {}
    try:
        with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base or base.startswith("."):
                    continue
                key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
                suffix = base.split(".", 1)[1].lower()
                entry = found.setdefault(key, {})
                if suffix == "cls":
                    entry["cls"] = tar.extractfile(member).read().decode(errors="replace").strip()
                elif suffix in IMAGE_KEYS and "image" not in entry:
                    entry["image"] = (member.name, member.size, member.offset_data)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"Cannot read tar shard {path}: {exc}.", "Rewrite or remove the shard.") from None
    for key, entry in found.items():
        if "image" not in entry:
            continue  # webdataset samples may carry other members (json, txt) without an image: not ours
        if "cls" not in entry or not entry["cls"].lstrip("-").isdigit() or int(entry["cls"]) < 0:
            raise DataError(f"Sample {key!r} in {path} has no class index (.cls member holding an integer >= 0).",
                            "Write <key>.cls with the class index for every sample.")
        yield (*entry["image"], int(entry["cls"]))


def _class_names(folder: Path, lists: dict[str, TarList]) -> list[str]:
    count = 1 + max(int(files.labels.max()) for files in lists.values())
    names_file = folder / CLASSES_FILE
    if not names_file.is_file():
        return [str(k) for k in range(count)]
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    if len(names) < count:
        raise DataError(f"{names_file} names {len(names)} classes but the shards use class index {count - 1}.",
                        "List one class name per line, in index order.")
    return names


def _with_classes(files: TarList, classes: list[str]) -> TarList:
    return TarList(files.root, tuple(classes), files.blob, files.offsets, files.labels, files.sizes, files.mtimes,
                   files.shard_paths, files.shard_index, files.data_offsets)


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")

