"""Students: a named timm model, or one derived from the teacher's family.

A derivation maps the teacher's (arch, kwargs) to a student's, scaling width
(channels) and depth (blocks per stage). Each family is one function in
`DERIVATIONS`, keyed by the timm model class; a student is always a plain timm
model so its checkpoint rebuilds with `edgekd.models.io.build(arch, kwargs)`.

How each family is rebuilt from (arch, kwargs) alone:
    ResNet             the teacher's name + `layers`, `channels`, `stem_width`
    ConvNeXt           the teacher's name + `depths`, `dims`
    VisionTransformer  the teacher's name + `depth`, `embed_dim`, `num_heads` (head size kept);
                       `img_size`/`patch_size` follow the teacher's kwargs
    MobileNetV3,       `edgekd_mbconv` (see edgekd.models.mbconv): timm's own generator for the
    EfficientNet       teacher's variant with scaled `channel_multiplier`/`depth_multiplier`,
                       because timm's named entrypoints pass those positionally
"""

from __future__ import annotations

from typing import Callable

from edgekd.config import StudentConfig
from edgekd.errors import ModelError

Derivation = Callable[[str, dict, float, float], tuple[str, dict]]  # (arch, kwargs, width, depth) -> (arch, kwargs)


def _scaled(value: int, factor: float, minimum: int, multiple: int = 1) -> int:
    return max(minimum, int(round(value * factor / multiple)) * multiple)


def skeleton(arch: str, kwargs: dict):
    """The model `arch` builds with `kwargs`, on the meta device: structure only, no memory, fast."""
    import torch

    from edgekd.models.io import build

    with torch.device("meta"):
        return build(arch, {**kwargs, "num_classes": 1})


def derive_resnet(arch: str, kwargs: dict, width: float, depth: float) -> tuple[str, dict]:
    """timm ResNet: `layers` per stage and `channels`/`stem_width` scaled."""
    default = skeleton(arch, kwargs)
    stages = [default.layer1, default.layer2, default.layer3, default.layer4]
    blocks = [len(stage) for stage in stages]
    # `channels` are the per-stage planes before the block's expansion (x4 in Bottleneck).
    channels = [info["num_chs"] // stage[0].expansion for info, stage in zip(default.feature_info[1:], stages)]
    stem = default.conv1.out_channels if hasattr(default.conv1, "out_channels") else 64  # deep stems are Sequential
    return arch, {
        **kwargs,
        "layers": [_scaled(b, depth, 1) for b in blocks],
        "channels": [_scaled(c, width, 8, 8) for c in channels],
        "stem_width": _scaled(stem, width, 8, 8),
    }


def derive_convnext(arch: str, kwargs: dict, width: float, depth: float) -> tuple[str, dict]:
    """timm ConvNeXt: `depths` (blocks per stage) and `dims` (channels per stage) scaled."""
    default = skeleton(arch, kwargs)
    return arch, {
        **kwargs,
        "depths": [_scaled(len(stage.blocks), depth, 1) for stage in default.stages],
        "dims": [_scaled(info["num_chs"], width, 8, 8) for info in default.feature_info],
    }


def derive_vit(arch: str, kwargs: dict, width: float, depth: float) -> tuple[str, dict]:
    """timm ViT/DeiT: fewer blocks, fewer heads of the same size (ViT-B at width 0.25 is ViT-Ti).

    The patch grid is the teacher's: pass `img_size`/`patch_size` in the teacher's
    kwargs (e.g. 32 and 4 for 32x32 inputs) and the student inherits them.
    """
    default = skeleton(arch, kwargs)
    heads = default.blocks[0].attn.num_heads
    head_dim = default.embed_dim // heads
    student_heads = _scaled(heads, width, 1)
    return arch, {
        **kwargs,
        "depth": _scaled(len(default.blocks), depth, 1),
        "num_heads": student_heads,
        "embed_dim": student_heads * head_dim,
    }


def derive_mbconv(arch: str, kwargs: dict, width: float, depth: float) -> tuple[str, dict]:
    """timm MobileNetV3 / EfficientNet (and their generator siblings): the teacher's
    generator with its multipliers scaled, built through `edgekd_mbconv`."""
    from edgekd.models import mbconv

    if arch == mbconv.ARCH:  # the teacher is itself a scaled model
        variant, base, defaults = kwargs["variant"], dict(kwargs.get("gen_args") or {}), {}
        kwargs = {k: v for k, v in kwargs.items() if k not in ("variant", "gen_args")}
    else:
        variant = arch
        _, base, defaults = mbconv.generator_call(arch)
    gen_args = dict(base)
    for name, factor, what in zip(mbconv.scalable_args(variant), (width, depth), ("width", "depth")):
        if name is None and factor != 1:
            raise ModelError(f"timm's generator for {variant!r} has no {what} multiplier.",
                             f"Set student.{what}: 1, or name a `student.model:`.")
        if name is not None:
            gen_args[name] = round(mbconv.multiplier(variant, base, name) * factor, 6)
    return mbconv.ARCH, {**defaults, **kwargs, "variant": variant, "gen_args": gen_args}


DERIVATIONS: dict[str, Derivation] = {
    "ResNet": derive_resnet,
    "ConvNeXt": derive_convnext,
    "VisionTransformer": derive_vit,
    "MobileNetV3": derive_mbconv,
    "EfficientNet": derive_mbconv,
}


def family_of(arch: str, kwargs: dict | None = None, table: dict | None = None) -> str | None:
    """The family of the timm class `arch` builds (see `family_of_model`)."""
    return family_of_model(skeleton(arch, kwargs or {}), table)


def family_of_model(model, table: dict | None = None) -> str | None:
    """The first timm class in `model`'s MRO with an entry in `table` (default
    DERIVATIONS); subclasses count: DeiT-distilled is a VisionTransformer."""
    table = DERIVATIONS if table is None else table
    for cls in type(model).__mro__:
        if cls.__module__.startswith("timm.") and cls.__name__ in table:
            return cls.__name__
    return None


def student_spec(cfg: StudentConfig, teacher_arch: str, teacher_kwargs: dict) -> tuple[str, dict]:
    """(arch, kwargs) of the student the config asks for.

    `teacher_kwargs` are the teacher's create_model kwargs (num_classes and
    in_chans at least; a ViT's img_size/patch_size carry over to its student).
    """
    if cfg.model is not None:
        return cfg.model, {"num_classes": teacher_kwargs["num_classes"], "in_chans": teacher_kwargs["in_chans"]}
    family = family_of(teacher_arch, teacher_kwargs)
    if family is None:
        raise ModelError(
            f"Cannot derive a student from teacher {teacher_arch!r}: its family is not supported.",
            f"Supported families: {', '.join(DERIVATIONS)}. Set `student.model:` to a timm model name instead.",
        )
    return DERIVATIONS[family](teacher_arch, dict(teacher_kwargs), cfg.width, cfg.depth)
