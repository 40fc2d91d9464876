"""Teachers: a timm model from the hub, a local checkpoint, or trained here.

`build_teacher` returns the network plus how its weights were obtained, so the
pipeline can decide whether it still needs training and say so in the report.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from edgekd.config import TeacherConfig
from edgekd.errors import ModelError
from edgekd.models.io import FORMAT, LEGACY_FORMAT, build, is_safetensors, read_safetensors


@dataclass
class TeacherInit:
    model: torch.nn.Module
    arch: str
    arch_kwargs: dict
    source: str  # "random" | "pretrained" | "checkpoint:<path>"
    head_reset: bool  # the classifier did not match num_classes and starts random

    @property
    def needs_training(self) -> bool:
        return self.source == "random" or self.head_reset


def build_teacher(cfg: TeacherConfig, num_classes: int, in_chans: int) -> TeacherInit:
    arch_kwargs = {"num_classes": num_classes, "in_chans": in_chans}
    if cfg.pretrained:
        return _from_hub(cfg.model, arch_kwargs)
    model = build(cfg.model, arch_kwargs)
    if cfg.checkpoint is None:
        return TeacherInit(model, cfg.model, arch_kwargs, "random", head_reset=False)
    head_reset = load_weights(model, cfg.checkpoint, trust=cfg.trust_checkpoint)
    return TeacherInit(model, cfg.model, arch_kwargs, f"checkpoint:{cfg.checkpoint}", head_reset)


def _from_hub(arch: str, arch_kwargs: dict) -> TeacherInit:
    import timm

    build(arch, {})  # name check with "did you mean" before any download
    unreachable = _hub_unreachable()
    try:
        with _hub_offline(unreachable is not None):
            model = timm.create_model(arch, pretrained=True, **arch_kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # hub errors subclass these (offline, 404, auth)
        if unreachable and isinstance(exc, FileNotFoundError):  # huggingface_hub's LocalEntryNotFoundError
            why = f"the model hub is unreachable ({unreachable}) and the weights are not in the local cache"
        else:
            why = f"{type(exc).__name__}: {str(exc)[:300]}"
        raise ModelError(
            f"Could not download pretrained weights for {arch!r}: {why}.",
            "Without access to the model hub, download the weights elsewhere and set "
            "`teacher.checkpoint: PATH` (state dict, timm checkpoint or .safetensors) with `pretrained: false`.",
        ) from None
    # timm re-initialises a classifier whose size differs from the pretrained one.
    pretrained_classes = getattr(model, "pretrained_cfg", {}).get("num_classes")
    head_reset = pretrained_classes is not None and pretrained_classes != arch_kwargs["num_classes"]
    return TeacherInit(model, arch, arch_kwargs, "pretrained", head_reset)


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the model hub cannot be reached, or None when it may be.

    huggingface_hub retries a failed connection for about 50 s before it gives up; one quick
    connect tells an offline user the same thing in seconds. Behind a proxy only the proxy
    knows, so the probe is skipped there.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{endpoint.hostname}:{port}: {exc}"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub's offline mode for one call: weights already in the local cache still load,
    and a missing file fails at once instead of after the retries."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


TRUST_HINT = "set `teacher.trust_checkpoint: true` to unpickle it fully (see docs/security.md)"


def read_state_dict(path: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, an edgekd checkpoint, a timm checkpoint or a bare state dict.

    torch files are read weights-only (edgekd.models.torchfile) unless `trust` (the user's
    `teacher.trust_checkpoint: true`) allows a full unpickle.
    """
    from edgekd.models.torchfile import load_trusted, load_weights_only

    if is_safetensors(path):
        return read_safetensors(path)[0]
    obj = (load_trusted(path, "teacher.checkpoint") if trust
           else load_weights_only(path, "teacher.checkpoint", trust_hint=TRUST_HINT))
    if isinstance(obj, dict) and obj.get("format") in (FORMAT, LEGACY_FORMAT):
        return obj["state_dict"]
    for key in ("state_dict_ema", "state_dict", "model"):  # timm train.py / common trainer layouts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} holds no state dict.", "Save it with torch.save(model.state_dict(), path).")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # DDP-saved keys


def load_weights(model: torch.nn.Module, path: Path, trust: bool = False) -> bool:
    """Load `path` into `model`, adapting the stem to in_chans and dropping a mismatched head.

    Returns True when the classifier was left at random init.
    """
    from timm.models import adapt_input_conv

    state = read_state_dict(path, trust=trust)
    own = model.state_dict()
    first_conv = model.pretrained_cfg.get("first_conv") if hasattr(model, "pretrained_cfg") else None
    classifier = model.default_cfg.get("classifier", "") if hasattr(model, "default_cfg") else ""
    head_reset = False
    for key in list(state):
        if key not in own or state[key].shape == own[key].shape:
            continue
        if first_conv and key == f"{first_conv}.weight":
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
        elif classifier and key.startswith(classifier + "."):
            del state[key]
            head_reset = True
        else:
            raise ModelError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, the model wants {tuple(own[key].shape)}.",
                "The checkpoint is for a different architecture: check teacher.model.",
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (head_reset and k.startswith(classifier + "."))]
    if missing or unexpected:
        raise ModelError(
            f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}.",
            "Check that teacher.model names the architecture the checkpoint was trained as.",
        )
    return head_reset
