"""Checkpoints that carry their own config (nanoGPT style), as safetensors files.

An edgekd checkpoint (`teacher.safetensors`, `student.safetensors`, ...) is a
safetensors file: the model's state dict as tensors, and its record as JSON
under the header's metadata key "edgekd":

    {"format": "edgekd.checkpoint/2",
     "arch": "resnet18",              # timm model name
     "arch_kwargs": {...},            # create_model kwargs (num_classes, in_chans, layers, channels, ...)
     "preprocess": {...},             # input size, mean, std, interpolation, crop (see edgekd.data)
     "classes": [...],
     "config": {...},                 # the model.yaml section(s) that produced it
     "metrics": {...},                # e.g. val accuracy
     "versions": {...},
     "qat": {...}}                    # QAT students only: modelopt's quantizer state

so `load_model(path)` rebuilds the network without the YAML that made it, and
reading one runs no code: safetensors holds tensors and a JSON header, nothing
that is unpickled. The few non-JSON values a record holds (tuples, torch.Size
and torch.dtype inside modelopt's state) are tagged objects in the JSON
(`_encode`/`_decode`). `read_checkpoint` returns the record with the tensors
under "state_dict", as `torch.load` of the earlier `.pt` format did.

Checkpoints of earlier edgekd versions (`*.pt`, format "edgekd.checkpoint/1", a
torch.save dict) are still read, through the weights-only unpickler
(edgekd.models.torchfile): they hold only dicts, strings, numbers and tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgekd.artifacts import versions, write_bytes_atomic
from edgekd.errors import ModelError

FORMAT = "edgekd.checkpoint/2"
LEGACY_FORMAT = "edgekd.checkpoint/1"  # torch.save dicts written by edgekd 0.1 (teacher.pt, student.pt)
RECORD_KEY = "edgekd"  # safetensors metadata key holding the record's JSON


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
    """Atomic save: a crash or a full disk never leaves a truncated checkpoint (or its .partial) behind."""
    from safetensors.torch import save

    record = {"format": FORMAT, "arch": arch, "arch_kwargs": dict(arch_kwargs), "versions": versions(), **extra}
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes_atomic(path, save(tensors, metadata={RECORD_KEY: json.dumps(_encode(record))}))


def read_checkpoint(path: str | Path) -> dict:
    """The record of an edgekd checkpoint with its tensors under "state_dict"."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint {str(path)!r} does not exist.", "Check the path.")
    ckpt = _read_safetensors(path) if is_safetensors(path) else _read_legacy(path)
    if ckpt is None or ckpt.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise ModelError(
            f"{path} is not an edgekd checkpoint.",
            "For a plain state dict or a timm checkpoint use `teacher.checkpoint:` in model.yaml.",
        )
    return ckpt


def is_safetensors(path: Path) -> bool:
    """By content, not name: 8-byte little-endian header length, then the header's JSON."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of any safetensors file; ModelError when it is damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, ValueError) as exc:
        raise ModelError(f"Cannot read {path} as safetensors: {exc}", "Is the file complete?") from None


def _read_safetensors(path: Path) -> dict | None:
    tensors, metadata = read_safetensors(path)
    if RECORD_KEY not in metadata:
        return None
    try:
        record = _decode(json.loads(metadata[RECORD_KEY]))
    except (json.JSONDecodeError, TypeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: its edgekd record is not valid ({exc}).", "Re-create the checkpoint.") from None
    if not isinstance(record, dict):
        return None
    return {**record, "state_dict": tensors}


def _read_legacy(path: Path) -> dict | None:
    from edgekd.models.torchfile import load_weights_only

    ckpt = load_weights_only(path, "checkpoint")
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == LEGACY_FORMAT else None


# JSON has no tuple, torch.Size or torch.dtype; modelopt's quantizer state holds all three
# (("quantize", {...}) mode pairs, buffer shapes and dtypes) and restores only with the same types.
_TAGS = ("__tuple__", "__size__", "__dtype__")


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"checkpoint record keys must be strings: {list(value)[:5]}")
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):  # numpy scalars
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a checkpoint record cannot hold a {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        (tag, inner), = value.items()
        if tag == "__dtype__":
            dtype = getattr(torch, str(inner), None)
            if not isinstance(dtype, torch.dtype):  # only a dtype: never another torch attribute
                raise ValueError(f"{inner!r} is not a torch dtype")
            return dtype
        items = [_decode(v) for v in inner]
        return torch.Size(items) if tag == "__size__" else tuple(items)
    return {k: _decode(v) for k, v in value.items()}


def load_model(path: str | Path) -> torch.nn.Module:
    """Rebuild an edgekd checkpoint's network in eval mode (a QAT one with its fake quantizers)."""
    ckpt = read_checkpoint(path)
    if "qat" in ckpt:  # BN folded + modelopt quantizers: the state dict only fits the rebuilt structure
        from edgekd.quantize.qat import rebuild_qat_model

        return rebuild_qat_model(ckpt)
    model = build(ckpt["arch"], ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
