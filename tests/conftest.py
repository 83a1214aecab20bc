"""Fixtures shared by the tests. Plain helpers live in helpers.py (`from helpers import ...`)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import train_into

INTEGRATION = Path(__file__).parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    """The runs' machine cache (train/machine_cache.py: the matmul peak, each model's FLOPs): one per test
    session, which its xdist workers inherit, never the user's ~/.cache, where a peak measured under the
    suite's load would stay and understate every later run's MFU."""
    if "MNIST_DIST_TEST_CACHE" not in os.environ:  # the controller's; a worker inherits it
        os.environ["MNIST_DIST_TEST_CACHE"] = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mnist-dist-")
        config.made_cache = os.environ["MNIST_DIST_TEST_CACHE"]


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config, "made_cache", None):
        shutil.rmtree(config.made_cache, ignore_errors=True)
        del os.environ["MNIST_DIST_TEST_CACHE"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration `slow` (pytest.ini): they start real processes, most of
    them train, and they take the suite's minutes. `-m "not slow"` runs the unit tests, in seconds."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.slow)
        if item.path.name.startswith("test_slurm"):  # one SLURM cluster at a time: one xdist worker runs them all
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the whole session, so the digits cache is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def train(data_dir, tmp_path):
    """Run train.py; returns (completed process, run dir). Fails the test with the output on a non-zero exit."""

    def run(*args, processes: int = 1, launcher: str | None = None, check: bool = True, env: dict | None = None):
        run_dir = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        return train_into(
            run_dir, data_dir, *args, processes=processes, launcher=launcher, check=check, env=env
        ), run_dir

    return run
