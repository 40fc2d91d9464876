"""Weight EMA for any training (teacher, student): timm's ModelEmaV3 behind a small interface.

The average covers the whole state dict (parameters and BatchNorm buffers), updated after
every optimizer step. Its decay ramps up with the step count (timm's warm-up,
1 - (1 + step)^-3/4, capped at `train.ema_decay`): early averages do not drag the random
initial weights along, and a resumed run, fed the same step numbers, averages exactly as the
uninterrupted one. The trainer scores the average on the validation split every epoch next
to the model itself; whichever scores higher can become the best weights.
"""

from __future__ import annotations

import torch

WARMUP_POWER = 3 / 4  # timm's advice for shorter runs: decay 0.999 after ~10k steps


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        from timm.utils import ModelEmaV3

        # float32 average on the model's device: scored every epoch, so it must stay next to the model
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged network (always in eval mode)."""
        return self._ema.module

    def update(self, model: torch.nn.Module, step: int) -> None:
        """Fold `model` in after optimizer step `step` (1-based, counted over the whole training)."""
        self._ema.update(model, step=step)

    def state_dict(self) -> dict:
        return self._ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._ema.load_state_dict(state)


def make_average(model: torch.nn.Module, cfg) -> WeightAverage | None:
    """The average `cfg.ema` asks for (a TrainConfig), or None."""
    return WeightAverage(model, cfg.ema_decay) if cfg.ema else None
