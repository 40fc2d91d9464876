"""Checkpoints that carry their own config (nanoGPT style).

A checkpoint is a dict saved with `torch.save`:

    {"format": "edgekd.checkpoint/1",
     "arch": "resnet18",              # timm model name
     "arch_kwargs": {...},            # create_model kwargs (num_classes, in_chans, layers, channels, ...)
     "state_dict": {...},
     "preprocess": {...},             # input size, mean, std, interpolation, crop (see edgekd.data)
     "classes": [...],
     "config": {...},                 # the model.yaml section(s) that produced it
     "metrics": {...},                # e.g. val accuracy
     "versions": {...}}

so `load_model(path)` rebuilds the network without the YAML that made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgekd.artifacts import versions
from edgekd.errors import ModelError

FORMAT = "edgekd.checkpoint/1"


def build(arch: str, arch_kwargs: dict[str, Any]) -> torch.nn.Module:
    import timm

    import edgekd.models.mbconv  # noqa: F401  registers edgekd's timm entrypoint (derived MobileNet/EfficientNet)

    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"Did you mean {', '.join(close)}? " if close else ""
        raise ModelError(
            f"{arch!r} is not a timm model name.",
            f"{hint}`python -c \"import timm; print(timm.list_models('*resnet*'))\"` lists names.",
        )
    return timm.create_model(arch, pretrained=False, **arch_kwargs)


def save_checkpoint(path: str | Path, model: torch.nn.Module, arch: str, arch_kwargs: dict, **extra) -> None:
    """Atomic save: a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": versions(),  # edgekd, python, torch, timm, onnx, ...
        **extra,
    }
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint {str(path)!r} does not exist.", "Check the path.")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(
            f"{path} is not an edgekd checkpoint.",
            "For a plain state dict or a timm checkpoint use `teacher.checkpoint:` in model.yaml.",
        )
    return ckpt


def load_model(path: str | Path) -> torch.nn.Module:
    """Rebuild an edgekd checkpoint's network in eval mode (a QAT one with its fake quantizers)."""
    ckpt = read_checkpoint(path)
    if "qat" in ckpt:  # BN folded + modelopt quantizers: the state dict only fits the rebuilt structure
        from edgekd.quantize.qat import rebuild_qat_model

        return rebuild_qat_model(ckpt)
    model = build(ckpt["arch"], ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
