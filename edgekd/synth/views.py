"""Each model its own view of one decoded sample: cross-resolution / cross-channel distillation.

When the student's input differs from the teacher's (96-px grey camera frames vs a 224-px RGB
teacher), every sample is decoded once and each model gets its own input from it:

    eval_view(image, pre)             deterministic: resize the short side to input_size / crop_pct,
                                      centre-crop, convert to pre.channels, normalise — exactly
                                      edgekd.data.preprocess_image, the exported model's contract
    sample_crop(size, rng, ...)       one random geometry (RandomResizedCrop box + flip) in the
                                      decoded sample's pixel coordinates
    crop_view(image, box, pre)        that box resized to the model's input_size, flipped if drawn,
                                      converted and normalised
    paired_views(image, pres, rng)    the teacher's and the student's views of the same crop

so teacher and student see the same region of the same picture, each at its own resolution,
channels and normalisation (the teacher's soft targets then describe what the student saw).
`image` is a PIL image (any mode PIL converts to L/RGB) or a uint8 array H×W or H×W×C.
Channel conversion is PIL's: RGB -> L by ITU-R 601 luma (0.299, 0.587, 0.114), L -> RGB by
copying. numpy + PIL only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgekd.data import Preprocess
from edgekd.data.transforms import centre_box, resize_short_side

_FILTERS = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST}  # anything else: bilinear, as preprocess_image


@dataclass(frozen=True)
class CropBox:
    """A region of the decoded sample in its pixel coordinates (floats: sub-pixel exact), and a flip."""

    left: float
    top: float
    right: float
    bottom: float
    flip: bool = False


def as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        from edgekd.errors import DataError

        raise DataError(f"A decoded sample must be uint8 HxW or HxWx1/3, got {arr.dtype} {arr.shape}.",
                        "Decode images to 8-bit grey or RGB first.")
    return Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def _converted(img: Image.Image, pre: Preprocess) -> Image.Image:
    return img.convert("L" if pre.channels == 1 else "RGB")


def _normalised(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """PIL image at input size -> C×S×S float32, scaled by pixel_max and normalised."""
    arr = np.asarray(img, dtype=np.float32) / pre.pixel_max
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    return ((arr - mean) / std).astype(np.float32)


def eval_view(image, pre: Preprocess) -> np.ndarray:
    """The deterministic eval input of one model (C, S, S) float32, as edgekd.data.preprocess_image
    and the data layer's eval transform (whose resize and crop it uses) make it."""
    img = resize_short_side(_converted(as_pil(image), pre), pre)
    return _normalised(img.crop(centre_box(*img.size, pre.input_size)), pre)


def sample_crop(size: tuple[int, int], rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5) -> CropBox:
    """torchvision RandomResizedCrop's box for an image of `size` (width, height): an area share in
    `scale` and a log-uniform aspect ratio in `ratio`, 10 tries, else the largest centred box
    within the ratio range; then a horizontal flip with probability `hflip`."""
    width, height = size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return CropBox(left, top, left + w, top + h, bool(rng.random() < hflip))
    w, h = float(width), float(height)
    if width / height < ratio[0]:
        h = width / ratio[0]
    elif width / height > ratio[1]:
        w = height * ratio[1]
    left, top = (width - w) / 2, (height - h) / 2
    return CropBox(left, top, left + w, top + h, bool(rng.random() < hflip))


def crop_view(image, box: CropBox, pre: Preprocess) -> np.ndarray:
    """`box` of the sample resized to the model's input size (C, S, S) float32, flipped if drawn."""
    img = _converted(as_pil(image), pre)
    img = img.resize((pre.input_size, pre.input_size), _FILTERS.get(pre.interpolation, Image.BILINEAR),
                     box=(box.left, box.top, box.right, box.bottom))
    if box.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalised(img, pre)


def paired_views(image, teacher: Preprocess, student: Preprocess, rng: np.random.Generator,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5) -> tuple[np.ndarray, np.ndarray, CropBox]:
    """(teacher view, student view, the box): one random geometry, each model's own resolution."""
    img = as_pil(image)
    box = sample_crop(img.size, rng, scale, ratio, hflip)
    return crop_view(img, box, teacher), crop_view(img, box, student), box


def eval_views(image, teacher: Preprocess, student: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(teacher eval input, student eval input) of one sample."""
    img = as_pil(image)
    return eval_view(img, teacher), eval_view(img, student)
