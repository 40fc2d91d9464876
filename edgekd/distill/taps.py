"""Read a model's internals through forward hooks (torchdistill style): model code is never rewritten.

A `Tap` records the outputs of named modules on every forward pass, and the
classifier's input (the penultimate embedding) under the name `PRE_LOGITS`.
ViT token outputs (B, N, C) are recorded as maps (B, C, h, w) without the
class/register tokens, so CNN and ViT features compare alike.

`pair_stages` matches student and teacher stages by spatial size, from timm's
`feature_info` and one probe forward pass, unless the config names the pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from edgekd.errors import ConfigError

PRE_LOGITS = "<pre_logits>"  # the classifier's input, (B, D)


def as_map(x: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """(B, C, H, W) as is; ViT tokens (B, prefix + h*w, C) -> (B, C, h, w)."""
    if x.ndim != 3:
        return x
    tokens = x[:, prefix_tokens:]
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ConfigError(f"Cannot lay {tokens.shape[1]} tokens out as a square map.",
                          "Pair feature losses with modules that output square grids.")
    return tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def classifier(model: nn.Module) -> nn.Module:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head = head[0] if isinstance(head, (tuple, list)) else head  # DeiT-distilled: (head, head_dist)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"{type(model).__name__} has no classifier to read an embedding from.",
                          "RKD needs a timm model with get_classifier().")
    return head


class Tap:
    """Forward hooks on `names` of `model`; `features[name]` holds the latest output."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        unknown = [n for n in names if n != PRE_LOGITS and n not in modules]
        if unknown:
            raise ConfigError(f"{type(model).__name__} has no module {unknown[0]!r}.",
                              f"Feature-bearing modules: {', '.join(stage_names(model)) or 'see model.named_modules()'}.")
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in dict.fromkeys(names):
            if name == PRE_LOGITS:
                hook = lambda _m, args: self.features.__setitem__(PRE_LOGITS, args[0].flatten(1))  # noqa: E731
                self._handles.append(classifier(model).register_forward_pre_hook(hook))
            else:
                self._handles.append(modules[name].register_forward_hook(self._recorder(name, prefix)))

    def _recorder(self, name: str, prefix: int):
        def record(_module, _args, output):
            output = output[0] if isinstance(output, (tuple, list)) else output
            self.features[name] = as_map(output, prefix)

        return record

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()


def stage_names(model: nn.Module) -> list[str]:
    """timm's feature_info modules, stride >= 4 (the stem's full-resolution maps are left out)."""
    return [f["module"] for f in getattr(model, "feature_info", []) if f.get("reduction", 4) >= 4]


@torch.no_grad()
def probe(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of each named module for one zero input of `input_shape` (C, H, W)."""
    tap = Tap(model, names)
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, device=device))
        return {n: tuple(tap.features[n].shape[1:]) for n in names}
    finally:
        model.train(was_training)
        tap.close()


@dataclass(frozen=True)
class Pair:
    student: str
    teacher: str
    student_shape: tuple[int, ...]  # (C, H, W)
    teacher_shape: tuple[int, ...]


def pair_stages(student: nn.Module, teacher: nn.Module, input_shape: tuple[int, ...],
                named: list[tuple[str, str]] | None = None) -> list[Pair]:
    """Student/teacher feature pairs: `named` ones, or, by default, for every spatial
    size both models produce, the deepest stage of each at that size."""
    if named:
        s_shapes = probe(student, [s for s, _ in named], input_shape)
        t_shapes = probe(teacher, [t for _, t in named], input_shape)
        return [Pair(s, t, s_shapes[s], t_shapes[t]) for s, t in named]
    s_names, t_names = stage_names(student), stage_names(teacher)
    if not s_names or not t_names:
        raise ConfigError("Cannot pair stages automatically: a model has no timm feature_info.",
                          "Name them in the loss: `pairs: [{student: layer3, teacher: layer3}]`.")
    s_shapes, t_shapes = probe(student, s_names, input_shape), probe(teacher, t_names, input_shape)
    deepest_s = {s_shapes[n][1:]: n for n in s_names}  # later stages overwrite earlier ones
    deepest_t = {t_shapes[n][1:]: n for n in t_names}
    pairs = [Pair(s, deepest_t[size], s_shapes[s], t_shapes[deepest_t[size]])
             for size, s in deepest_s.items() if size in deepest_t]
    if not pairs:
        raise ConfigError("No student and teacher stages share a spatial size.",
                          "Name the pairs in the loss: `pairs: [{student: ..., teacher: ...}]`.")
    return pairs
