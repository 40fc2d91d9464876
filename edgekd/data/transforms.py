"""Per-sample transforms: the eval transform (the exported model's input contract) and training
augmentation taken from timm, configured with timm's own names.

Image sources (files, the uint8 cache, webdataset shards) give PIL images:
    eval_transform(pre)            resize the short side to input_size / crop_pct, centre-crop, normalise:
                                   exactly edgekd.data.preprocess_image, which devices reproduce
    train_transform(cfg, pre)      timm.data.create_transform(is_training=True, ...)
Array sources (digits, idx: small grey images already at input size, in [0, 1]) give tensors:
    array_eval_transform(pre)      normalise
    array_train_transform(cfg, pre) random crop of a reflect-padded image, flips, normalise, timm RandomErasing
Training transforms draw from the global generators, which the dataset seeds per sample
(edgekd.data.seeding), so they run unchanged in DataLoader workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from edgekd.errors import ConfigError
from edgekd.schema import Strict

if TYPE_CHECKING:  # annotations only: edgekd.config imports this module, maybe while edgekd.data initialises
    from edgekd.data import Preprocess

_PIL_FILTERS = {"bicubic": "BICUBIC", "nearest": "NEAREST"}  # anything else: bilinear, as preprocess_image


class ImageAugmentConfig(Strict):
    """Training augmentation of image files (data.train_transform), in timm's names (timm train.py /
    create_transform). mean/std are not here: training normalises exactly as the eval transform does
    (data.mean/std or the teacher's)."""

    scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop: area share of the picture")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop: aspect ratio range")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    color_jitter: float | tuple[float, float, float] | tuple[float, float, float, float] | None = Field(
        0.4, description="brightness/contrast/saturation[/hue]; off when auto_augment is set (timm's rule)")
    auto_augment: str | None = Field(None, description="a timm policy: 'rand-m9-mstd0.5', 'rand-n1-m10-mstd101' "
                                     "(TrivialAugment-like), 'augmix-m5-w4-d2', 'original', 'v0', '3a'")
    interpolation: Literal["bilinear", "bicubic", "nearest", "random"] | None = Field(
        None, description="crop resize filter; default: the eval interpolation (the teacher's)")
    re_prob: float = Field(0.0, ge=0, le=1, description="RandomErasing probability")
    re_mode: Literal["const", "rand", "pixel"] = "const"
    re_count: int = Field(1, ge=1, description="RandomErasing: up to this many boxes")

    @model_validator(mode="after")
    def _ranges(self) -> "ImageAugmentConfig":
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError("scale needs 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError("ratio needs 0 < min <= max")
        if self.auto_augment is not None:
            _check_policy(self.auto_augment)
        return self


class TrainTransformConfig(ImageAugmentConfig):
    """ImageAugmentConfig plus the small-array crop and timm Mixup/CutMix (edgekd.data.mixing)."""

    pad_crop: int = Field(4, ge=0, description="digits/idx arrays only: random crop of a reflect-padded image")
    mixup: float = Field(0.0, ge=0, description="mixup alpha; > 0 turns mixup on")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha; > 0 turns cutmix on")
    cutmix_minmax: tuple[float, float] | None = Field(None, description="cutmix box size range; overrides cutmix")
    mixup_prob: float = Field(1.0, ge=0, le=1, description="probability of mixing a batch/pair/element")
    mixup_switch_prob: float = Field(0.5, ge=0, le=1, description="with both on: probability of cutmix")
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"

    @model_validator(mode="after")
    def _cutmix_range(self) -> "TrainTransformConfig":
        if self.cutmix_minmax is not None and not 0 < self.cutmix_minmax[0] < self.cutmix_minmax[1] <= 1:
            raise ValueError("cutmix_minmax needs 0 < min < max <= 1")
        return self

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


IMAGE_ONLY_KEYS = ("scale", "ratio", "color_jitter", "auto_augment", "interpolation")


def resize_short_side(img, pre: Preprocess):
    """Short side to input_size / crop_pct (never below input_size), as preprocess_image does it."""
    from PIL import Image

    scale = pre.input_size / pre.crop_pct
    w, h = img.size
    ratio = scale / min(w, h)
    size = (max(pre.input_size, round(w * ratio)), max(pre.input_size, round(h * ratio)))
    return img.resize(size, getattr(Image, _PIL_FILTERS.get(pre.interpolation, "BILINEAR")))


def centre_box(w: int, h: int, side: int) -> tuple[int, int, int, int]:
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


class EvalTransform:
    """PIL image (L/RGB) -> C x S x S float32 tensor: resize, centre crop, scale, normalise."""

    deterministic = True  # SampleDataset seeds no generators for it

    def __init__(self, pre: Preprocess):
        self.pre = pre
        self.mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, img):
        img = resize_short_side(img, self.pre)
        return self._tensor(img.crop(centre_box(*img.size, self.pre.input_size)))

    def from_crop(self, img):
        """An augmented crop (PIL, any size and mode) as this model's input: its channels, its input size, its
        normalisation (PairedTrainTransform)."""
        from PIL import Image

        img = img.convert("L" if self.pre.channels == 1 else "RGB")
        side = self.pre.input_size
        if img.size != (side, side):
            img = img.resize((side, side), getattr(Image, _PIL_FILTERS.get(self.pre.interpolation, "BILINEAR")))
        return self._tensor(img)

    def _tensor(self, img):
        import torch

        arr = np.asarray(img, dtype=np.float32) / self.pre.pixel_max
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(((arr - self.mean) / self.std).astype(np.float32))


def eval_transform(pre: Preprocess) -> EvalTransform:
    return EvalTransform(pre)


def train_transform(cfg: ImageAugmentConfig, pre: Preprocess, *, separate: bool = False):
    """timm's training transform (RandomResizedCrop, flips, colour jitter or an auto-augment policy,
    ToTensor, Normalize, RandomErasing) for PIL images; `separate`: timm's three parts (geometry,
    colour, to-tensor) as (primary, secondary, final)."""
    from timm.data import create_transform

    return create_transform(
        pre.input_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, vflip=cfg.vflip,
        color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment,
        interpolation=cfg.interpolation or pre.interpolation, mean=tuple(pre.mean), std=tuple(pre.std),
        re_prob=cfg.re_prob, re_mode=cfg.re_mode, re_count=cfg.re_count, separate=separate)


class PairedTrainTransform:
    """timm's training transform generalised to two views of one picture (a student of its own input size or
    channels, issue #16 item 3): PIL sample -> (student tensor, teacher tensor).

    ONE draw of timm's picture ops (RandomResizedCrop box, flips, then colour jitter or the auto-augment
    policy: `train_transform(separate=True)`'s primary and secondary parts) runs at the larger view's size and
    channels ("master"); each model's view is that augmented crop converted to its channels (PIL: RGB -> L by
    ITU-R 601 luma), resized to its input size and normalised as its eval transform does. So both see the same
    region, flips and colours; the master's view is exactly timm's transform of the picture (same seed),
    without RandomErasing, which would draw a box per view and is refused by config (as re_prob > 0)."""

    deterministic = False

    def __init__(self, cfg: ImageAugmentConfig, teacher: Preprocess, student: Preprocess):
        from torchvision import transforms

        self.master = max((teacher, student), key=lambda pre: (pre.input_size, pre.channels))
        if self.master.channels < max(teacher.channels, student.channels):
            raise ConfigError("data.augment 'timm' with two views crops at the larger view, which needs the most "
                              "channels too.", "Give the larger view (teacher or student) 3 channels.")
        primary, secondary, _final = train_transform(cfg, self.master, separate=True)
        self.picture = transforms.Compose([primary, secondary])
        self.student, self.teacher = EvalTransform(student), EvalTransform(teacher)

    def __call__(self, img):
        img = self.picture(img.convert("L" if self.master.channels == 1 else "RGB"))
        return self.student.from_crop(img), self.teacher.from_crop(img)


class ArrayEvalTransform:
    """C x S x S float tensor in [0, 1] -> normalised."""

    deterministic = True

    def __init__(self, pre: Preprocess):
        import torch

        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x):
        return (x - self.mean) / self.std


class ArrayTrainTransform(ArrayEvalTransform):
    """Random crop of a `pad`-px reflect-padded image, flips, normalise, timm RandomErasing."""

    deterministic = False

    def __init__(self, cfg: TrainTransformConfig, pre: Preprocess):
        from timm.data.random_erasing import RandomErasing

        super().__init__(pre)
        self.pad, self.hflip, self.vflip = cfg.pad_crop, cfg.hflip, cfg.vflip
        self.erase = RandomErasing(cfg.re_prob, mode=cfg.re_mode, max_count=cfg.re_count, device="cpu") \
            if cfg.re_prob > 0 else None

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        _, h, w = x.shape
        if self.pad:
            padded = F.pad(x[None], (self.pad,) * 4, mode="reflect")[0]
            dy, dx = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
            x = padded[:, dy : dy + h, dx : dx + w]
        if self.hflip and float(torch.rand(())) < self.hflip:
            x = x.flip(-1)
        if self.vflip and float(torch.rand(())) < self.vflip:
            x = x.flip(-2)
        x = super().__call__(x)
        return self.erase(x) if self.erase is not None else x


def array_eval_transform(pre: Preprocess) -> ArrayEvalTransform:
    return ArrayEvalTransform(pre)


def array_train_transform(cfg: TrainTransformConfig, pre: Preprocess) -> ArrayTrainTransform:
    """The small-image set. Keys that need a picture (crop scale/ratio, colour, policies) are refused,
    not ignored."""
    given = sorted(k for k in IMAGE_ONLY_KEYS if k in cfg.model_fields_set)
    if given:
        raise ConfigError(f"{', '.join(given)} apply to image files (imagefolder, webdataset), not to the "
                          "small digits/idx arrays.", "Remove them; arrays use pad_crop, hflip, vflip and re_*.")
    return ArrayTrainTransform(cfg, pre)


def _check_policy(policy: str) -> None:
    """Build the policy with timm, turning timm's assertions into a config error."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    build = (rand_augment_transform if policy.startswith("rand") else
             augment_and_mix_transform if policy.startswith("augmix") else auto_augment_transform)
    try:
        build(policy, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, KeyError, ValueError, IndexError) as exc:
        raise ValueError(f"auto_augment {policy!r} is not a timm policy ({type(exc).__name__}: {exc}); "
                         "e.g. 'rand-m9-mstd0.5', 'augmix-m5-w4-d2', 'original'") from None
