"""Run a whole array through a model in the batches it takes (numpy only, torch-free)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def run_in_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, fixed: int | None = None,
                   limit: int | None = None, batch_size: int = 32) -> np.ndarray:
    """Outputs (N, K) float32 of `run` over x (N, C, H, W), batch by batch.

    fixed: a static-batch model takes exactly this many samples per call; the last batch is
    zero-padded up to it and the padding's outputs dropped. limit: the most a call takes
    (a TensorRT engine's profile). Otherwise batches of `batch_size`.
    """
    step = fixed or min(batch_size, limit or batch_size)
    out = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        n = len(chunk)
        if fixed is not None and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), dtype=chunk.dtype)])
        out.append(np.asarray(run(chunk))[:n].reshape(n, -1))
    return np.concatenate(out).astype(np.float32)
