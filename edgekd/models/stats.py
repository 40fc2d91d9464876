"""Model size and cost, counted on the PyTorch module."""

from __future__ import annotations

import torch


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass at `input_shape` (batch 1), 2 per multiply-add,
    as torch's FlopCounterMode counts them (convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape[-3:]))
    model.train(was_training)
    return int(counter.get_total_flops())
