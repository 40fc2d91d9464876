"""Small tensor helpers shared by the methods: pixel conversions, weight hashes, frozen models."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def _stats(mean, std, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1)
    return (torch.as_tensor(mean, dtype=like.dtype, device=like.device).view(shape),
            torch.as_tensor(std, dtype=like.dtype, device=like.device).view(shape))


def to_uint8(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised model inputs (N, C, H, W) -> uint8 pixels: de-normalise to [0, 1], round."""
    m, s = _stats(mean, std, x)
    return (x.detach() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def from_uint8(pixels: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> normalised float32 model inputs."""
    x = torch.from_numpy(np.array(pixels, dtype=np.float32)).div(255)  # a copy: memmaps are read-only
    m, s = _stats(mean, std, x)
    return (x - m) / s


def pixel_bounds(mean, std, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of black and white, per channel: (1, C, 1, 1) each."""
    m, s = _stats(mean, std, like)
    return -m / s, (1 - m) / s


def weights_sha256(model: nn.Module) -> str:
    """Hash of a model's state dict (names, dtypes, shapes, values): its identity for caching."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@contextmanager
def frozen(*models: nn.Module | None):
    """Eval-free freeze: no parameter gradients (inputs still get theirs), flags restored after."""
    params = [p for m in models if m is not None for p in m.parameters()]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


@torch.no_grad()
def num_classes(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """Output width of a classifier, from one zero input of `shape` (C, H, W)."""
    was_training = model.training
    model.eval()
    try:
        return int(model(torch.zeros(1, *shape, device=model_device(model))).shape[1])
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(0)).device


@torch.no_grad()
def teacher_labels(teacher: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The teacher's argmax class per image, int64."""
    was_training = teacher.training
    teacher.eval()
    try:
        return teacher(x.to(model_device(teacher))).argmax(1).cpu().numpy().astype(np.int64)
    finally:
        teacher.train(was_training)
