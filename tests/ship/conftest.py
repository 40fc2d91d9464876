import pytest

from tests.bench.fakerun import build_fake_run


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    """A real run directory (tiny models); read-only for tests: copy it before changing it."""
    return build_fake_run(tmp_path_factory.mktemp("ship") / "run")
