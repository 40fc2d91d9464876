import numpy as np
import pytest

from edgekd.bench.stats import STAT_KEYS, summarize, throughput_ips


def test_summarize_matches_numpy():
    rng = np.random.default_rng(0)
    samples = rng.gamma(4.0, 0.5, size=1001)
    s = summarize(samples.tolist())
    assert set(s) == set(STAT_KEYS)
    assert s["p50"] == pytest.approx(np.median(samples), rel=1e-12)
    assert s["p90"] == pytest.approx(np.percentile(samples, 90), rel=1e-12)
    assert s["p95"] == pytest.approx(np.percentile(samples, 95), rel=1e-12)
    assert s["p99"] == pytest.approx(np.percentile(samples, 99), rel=1e-12)
    assert s["mean"] == pytest.approx(samples.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(samples.std(), rel=1e-12)
    assert (s["min"], s["max"]) == (samples.min(), samples.max())
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]


def test_single_sample_and_empty():
    assert summarize([2.5]) == {k: (0.0 if k == "std" else 2.5) for k in STAT_KEYS}
    with pytest.raises(ValueError):
        summarize([])


def test_throughput_is_batch_over_mean_time():
    # 8 images per call, calls of 2 ms and 6 ms: 16 images in 8 ms = 2000 images/s.
    assert throughput_ips([2.0, 6.0], batch_size=8) == pytest.approx(2000.0)
