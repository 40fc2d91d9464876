"""Small ImageFolders written into a temp dir for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(rng: np.random.Generator, w: int, h: int, channels: int = 3) -> np.ndarray:
    """A smooth picture (a few low-frequency waves), like a photo rather than noise: uint8 (h, w[, 3])."""
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    planes = [127 + 120 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy) + rng.uniform(0, 6))
              for _ in range(channels)]
    arr = np.stack(planes, -1).clip(0, 255).astype(np.uint8)
    return arr[..., 0] if channels == 1 else arr


def write_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, *, seed: int = 0,
                 sizes=(40, 90), suffix: str = ".jpg") -> Path:
    """ROOT/<class>/<i><suffix>, smooth RGB images of random sizes within `sizes`."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(*sizes, 2))
            Image.fromarray(smooth_image(rng, w, h)).save(root / name / f"{i:03d}{suffix}")
    return root


def write_shards(folder: Path, out: Path, per_shard: int = 8) -> Path:
    """The images of an ImageFolder `folder` as webdataset shards under `out`, in listing order (class, then
    name): <key>.<suffix> + <key>.cls per sample, classes.txt with the class names. A folder with train/,
    val/, test/ subfolders gives shards in the same subfolders."""
    import webdataset as wds

    splits = [name for name in ("train", "val", "test") if (folder / name).is_dir()] or [""]
    classes = sorted(p.name for p in (folder / splits[0]).iterdir() if p.is_dir())
    for split in splits:
        files = [(label, path) for label, name in enumerate(classes)
                 for path in sorted((folder / split / name).iterdir())]
        (out / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(files), per_shard):
            with wds.TarWriter(str(out / split / f"shard-{start // per_shard:04d}.tar")) as sink:
                for label, path in files[start : start + per_shard]:
                    sink.write({"__key__": f"{path.parent.name}_{path.stem}", path.suffix[1:]: path.read_bytes(),
                                "cls": str(label).encode()})
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    return out
