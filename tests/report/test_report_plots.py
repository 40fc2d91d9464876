import pytest

from edgekd.report import plots
from tests.bench.fakerun import fake_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "points, front",
    [
        ([(1.0, 0.9)], [0]),
        # (latency, accuracy): b is slower and worse than a; c is slower but better.
        ([(1.0, 0.8), (2.0, 0.7), (3.0, 0.9)], [0, 2]),
        # Equal latency: only the more accurate one; equal accuracy: only the faster one.
        ([(1.0, 0.8), (1.0, 0.85), (2.0, 0.85)], [1]),
        ([(5.0, 0.99), (0.5, 0.60), (1.0, 0.95), (2.0, 0.90)], [1, 2, 0]),
    ],
)
def test_pareto_front(points, front):
    assert plots.pareto_front(points) == front


def test_plots_are_pngs_or_none():
    arts = fake_report()["artifacts"]
    for png in (plots.accuracy_vs_latency(arts, 5.0), plots.latency_distributions(arts, 5.0), plots.throughput_sweep(arts)):
        assert png.startswith(PNG)
    bare = [{"name": "x", "latency_ms": {"p50": 1.0}}]
    assert plots.accuracy_vs_latency(bare, None) is None
    assert plots.latency_distributions(bare, None) is None
    assert plots.throughput_sweep(bare) is None


def test_status_color():
    assert plots.status_color({"budget": {"pass": True}}) == plots.PASS
    assert plots.status_color({"budget": {"pass": False}}) == plots.FAIL
    assert plots.status_color({}) == plots.UNJUDGED


def test_global_matplotlib_state_is_untouched():
    import matplotlib

    before = matplotlib.get_backend()
    plots.throughput_sweep(fake_report()["artifacts"])
    assert matplotlib.get_backend() == before
