"""Raw image sources: each returns uint8/float arrays before preprocessing.

One loader per dataset kind, dispatched through `SOURCES`. A loader returns
`RawData(train_x, train_y, test_x, test_y, classes, pixel_max)` where images are
N×H×W (grey) or N×H×W×3, and test_* is None when the source has no official
held-out split (the caller then splits train deterministically).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import DataError


@dataclass
class RawData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    classes: list[str]
    pixel_max: float  # the value that means "white": 16 for digits, 255 for 8-bit images


def load_digits(_path: Path | None) -> RawData:
    """scikit-learn's bundled 8×8 handwritten digits: 1,797 images, nothing to download."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = bunch.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    return RawData(images, bunch.target.astype(np.int64), None, None, [str(c) for c in range(10)], 16.0)


# Accepted MD5s of the .gz files: the published ones (zalandoresearch/fashion-mnist
# README), then Debian's dataset-fashion-mnist (its dpkg md5sums): Debian re-gzipped
# the files without the stored file name (each .gz is 24 bytes shorter), same content.
# Files with other names are read unchecked.
KNOWN_IDX_MD5 = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_idx(path: Path) -> RawData:
    """MNIST-format IDX files (Fashion-MNIST from Debian's dataset-fashion-mnist)."""
    files = {name: _find_idx(path, name) for name in KNOWN_IDX_MD5}
    for name, file in files.items():
        _check_md5(file, KNOWN_IDX_MD5[name])
    train_x, train_y = _read_idx(files["train-images-idx3-ubyte.gz"]), _read_idx(files["train-labels-idx1-ubyte.gz"])
    test_x, test_y = _read_idx(files["t10k-images-idx3-ubyte.gz"]), _read_idx(files["t10k-labels-idx1-ubyte.gz"])
    n_classes = int(train_y.max()) + 1
    classes = FASHION_CLASSES if n_classes == 10 and "fashion" in str(path).lower() else [str(i) for i in range(n_classes)]
    return RawData(train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64), classes, 255.0)


def _find_idx(root: Path, name: str) -> Path:
    for candidate in (root / name, root / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root} has no {name}.",
        "Point data.path at the folder holding the four MNIST-format files "
        "(for Fashion-MNIST: apt-get install dataset-fashion-mnist, then "
        "data.path: /usr/share/datasets/fashion-mnist).",
    )


def _check_md5(file: Path, expected: tuple[str, ...]) -> None:
    if file.suffix != ".gz":
        return  # the published sums are of the .gz files
    digest = hashlib.md5(file.read_bytes()).hexdigest()
    if digest not in expected:
        raise DataError(
            f"{file} has MD5 {digest}, but the published value is {expected[0]} (Debian's: {expected[1]}).",
            "The file is corrupt or a different dataset: reinstall or re-download it.",
        )


MAX_IDX_BYTES = 2 << 30  # Fashion-MNIST's largest file is 47 MB; a gzip bomb stops here, not at RAM's end


def _read_idx(file: Path) -> np.ndarray:
    """The array an IDX file declares, reading no more than its header says (and at most MAX_IDX_BYTES)."""
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
            raise DataError(f"{file} is not an unsigned-byte IDX file.", "Check data.kind and data.path.")
        ndim = head[3]
        shape = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        size = int(np.prod(shape, dtype=np.int64))
        if size > MAX_IDX_BYTES:
            raise DataError(f"{file} declares {size / 2**30:.1f} GiB of pixels; edgekd reads IDX files up to "
                            f"{MAX_IDX_BYTES / 2**30:.0f} GiB.", "Is it the right file? Use data.kind imagefolder "
                            "for large datasets.")
        data = fh.read(size)
    if len(data) < size:
        raise DataError(f"{file} is truncated: its header declares {size} bytes, it holds {len(data)}.",
                        "Reinstall or re-download it.")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
