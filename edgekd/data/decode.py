"""One image file (or bytes) -> a PIL image in mode L or RGB, decoded fast and right.

- Draft mode: a JPEG larger than needed is decoded by libjpeg's DCT scaling at 1/2, 1/4
  or 1/8 size, the smallest that still leaves the short side >= `short_side` (a 12 MP
  photo wanted at 256 px decodes ~8x smaller). Pixels then differ slightly from a full
  decode followed by the same resize (both average over the same area); an exact match
  with the full decode needs `short_side=None`.
- EXIF orientation is applied (ImageOps.exif_transpose): phone photos stand upright.
- Every mode becomes L or RGB: alpha (LA, RGBA, PA, P with transparency, La, RGBa) is
  composited on WHITE (what a viewer or browser shows; PIL's plain convert would keep the
  colour stored under transparent pixels, often black); CMYK, YCbCr, LAB, HSV convert;
  16-bit (I;16*, and I, read as 16-bit) is scaled by 255/65535, never clipped; F (float) is
  read as 0..1 when its maximum is <= 1, else as 0..255; 1-bit becomes 0/255.

Unreadable input raises one of BAD_IMAGE_ERRORS; `bad_image_policy` turns a list of them
into the user's choice (`on_bad_image: error | skip`).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from edgekd.errors import DataError

ALPHA_BACKGROUND = (255, 255, 255)
# What PIL raises on a non-image, a truncated or corrupt file, or a decompression bomb.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_HIGH_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}

OnBadImage = Literal["error", "skip"]


def load_image(source: Path | str | bytes, channels: int, short_side: int | None = None) -> Image.Image:
    """Decode `source` (a path or the file's bytes) into mode L (channels 1) or RGB (channels 3).

    short_side: the smallest short side the caller will resize to; enables draft mode."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    if short_side:
        w, h = img.size
        k = short_side / min(w, h)
        if k < 1:
            img.draft(None, (math.ceil(w * k), math.ceil(h * k)))  # a no-op for anything but JPEG
    img.load()  # decode now: a truncated file fails here, inside the caller's error handling
    img = ImageOps.exif_transpose(img)
    return to_mode(img, "L" if channels == 1 else "RGB")


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Any PIL mode -> `mode` ("L" or "RGB"), by the rules in the module docstring."""
    if img.mode in _HIGH_DEPTH:
        img = _to_8bit(img)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,)), rgba)
    return img if img.mode == mode else img.convert(mode)


def _to_8bit(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class BadImage:
    path: str
    reason: str


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def bad_image_policy(bad: list[BadImage], on_bad_image: OnBadImage, where: str) -> None:
    """`error`: one DataError listing every bad file. `skip`: nothing to do here (the caller drops them
    and records the count)."""
    if not bad or on_bad_image == "skip":
        return
    shown = "; ".join(f"{b.path} ({b.reason})" for b in bad[:20])
    more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise DataError(f"{len(bad)} unreadable image(s) in {where}: {shown}{more}.",
                    "Remove or replace them, or set data.on_bad_image: skip to train without them.")
