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
