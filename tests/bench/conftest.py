import pytest

from tests.bench.fakerun import build_fake_run


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    """A real run directory (tiny models); read-only for tests: copy it before changing it."""
    return build_fake_run(tmp_path_factory.mktemp("bench") / "run")


QUICK = dict(warmup_s=0.05, min_iterations=20, min_seconds=0.2, batch_sizes=(1, 4), rounds=2, threads=1)
