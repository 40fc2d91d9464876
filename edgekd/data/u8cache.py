"""The decoded cache (`data.cache: uint8`): each image decoded once, stored at training size.

What is stored: the eval transform's resize (short side to S = input_size / crop_pct, never
below input_size) and a centred S x S square, as uint8. So
- the eval transform applied to a cached image is pixel-identical to it applied to the file
  (the square is placed so that its centre crop is the eval crop);
- training crops (RandomResizedCrop) have the 1/crop_pct margin (256 px for 224 at 0.875) and
  see the centre square of the picture at S px: a cache trades the full picture's edges and
  resolution for never decoding a JPEG again (digits/idx arrays need no cache).
The cache is one u8 store (edgekd.data.u8store) per file list, named by a hash of the list's
identity and this geometry: every stage and every later run with the same files and preprocessing
shares it. Built in parallel, checkpointed every few hundred images: an interrupted build resumes.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekd.data import Preprocess
from edgekd.data.decode import BadImage, OnBadImage, bad_image_policy, load_image
from edgekd.data.identity import dataset_identity
from edgekd.data.listing import FileList
from edgekd.data.passes import decode_pass
from edgekd.data.transforms import centre_box, resize_short_side
from edgekd.data.u8store import U8Store, U8Writer

CACHE_VERSION = 1
CHECKPOINT_EVERY = 512  # images between resume points


def cache_side(pre: Preprocess) -> int:
    return max(pre.input_size, round(pre.input_size / pre.crop_pct))


def cache_geometry(pre: Preprocess) -> dict:
    """Everything that decides the stored bytes (mean/std do not: normalising comes after)."""
    return {"cache_version": CACHE_VERSION, "side": cache_side(pre), "channels": pre.channels,
            "interpolation": pre.interpolation, "draft": True, "alpha_background": "white"}


def cache_path(files: FileList, pre: Preprocess, cache_root: Path) -> Path:
    key = dataset_identity(files, cache_geometry(pre))
    return Path(cache_root) / f"u8-{key[:24]}"


@dataclass(frozen=True)
class CacheImage:
    """path -> (C, S, S) uint8: draft decode, eval resize, the square around the eval crop."""

    pre: Preprocess

    def __call__(self, path) -> np.ndarray:
        pre, side = self.pre, cache_side(self.pre)
        img = resize_short_side(load_image(path, pre.channels, side), pre)
        if min(img.size) != side:  # float rounding at an x.5 size: resize to the exact side
            w, h = img.size
            img = img.resize((max(side, round(w * side / min(w, h))), max(side, round(h * side / min(w, h)))))
        left, top, _, _ = centre_box(*img.size, pre.input_size)
        shift = (side - pre.input_size) // 2  # the eval crop sits at `shift` inside the square
        arr = np.asarray(img.crop((left - shift, top - shift, left - shift + side, top - shift + side)))
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def build_u8_cache(files: FileList, pre: Preprocess, cache_root: Path, *, on_bad_image: OnBadImage = "error",
                   workers: int | None = None, ui=None) -> U8Store:
    """The cache of `files` at training size: opened when it exists (no image decoded), else built.
    Bad images: `error` raises one DataError listing them all; `skip` leaves them out (the store's
    index.json lists them under "skipped"; record k is the k-th good file)."""
    path = cache_path(files, pre, cache_root)
    with _lock(path):
        if not (path / "index.json").is_file():
            _build(files, pre, path, on_bad_image, workers, ui)
    store = U8Store(path)
    skipped = [BadImage(**b) for b in store.index.get("skipped", [])]
    bad_image_policy(skipped, on_bad_image, str(files.root))
    return store


def _build(files: FileList, pre: Preprocess, path: Path, on_bad_image: OnBadImage, workers, ui) -> None:
    side = cache_side(pre)
    writer = U8Writer(path, (pre.channels, side, side), key=path.name)
    consumed = int(writer.resumed.get("consumed", 0))
    bad = [BadImage(**b) for b in writer.resumed.get("bad", [])]
    try:
        for i, image, problem in decode_pass(files, CacheImage(pre), workers=workers, start=consumed, ui=ui,
                                             description=f"caching {len(files)} images at {side}px"):
            if problem is not None:
                bad.append(problem)
            else:
                writer.append(image, int(files.labels[i]))
            if (i + 1) % CHECKPOINT_EVERY == 0:
                writer.checkpoint(consumed=i + 1, bad=[asdict(b) for b in bad])
        writer.checkpoint(consumed=len(files), bad=[asdict(b) for b in bad])
    finally:
        writer.close()
    bad_image_policy(bad, on_bad_image, str(files.root))  # error: the .partial stays; fixed files make a new key
    writer.finish(identity=path.name.removeprefix("u8-"), geometry=cache_geometry(pre), source=str(files.root),
                  files=len(files), skipped=[asdict(b) for b in bad])


@contextmanager
def _lock(path: Path):
    """One builder per cache (torchrun ranks, two runs sharing a cache folder); the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cache_summary(store: U8Store) -> dict:
    """What the report says about a cache: where, how many records, bytes on disk, skipped files."""
    return {"path": str(store.path), "records": store.count, "bytes": store.count * store.record_bytes,
            "shape": list(store.shape), "skipped": len(store.index.get("skipped", []))}


