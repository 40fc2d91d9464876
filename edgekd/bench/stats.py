"""Summary statistics of per-iteration latency samples (numpy only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

STAT_KEYS = ("p50", "p90", "p95", "p99", "mean", "std", "min", "max")


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99/mean/std/min/max of latency samples in milliseconds (CPU runs and
    TensorRT engines alike).

    Percentiles use numpy's default linear interpolation; std is the
    population std (ddof=0), so one sample gives 0 rather than NaN.
    """
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples to summarize")
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def throughput_ips(samples_ms: Sequence[float], batch_size: int) -> float:
    """Images per second: batch size over the mean time per call.

    The mean (not the median) because throughput is total work over total
    time, and slow outliers do cost time.
    """
    mean_ms = float(np.mean(np.asarray(samples_ms, dtype=np.float64)))
    return batch_size * 1000.0 / mean_ms if mean_ms > 0 else float("inf")
