"""Fixtures of the integration tests: trained runs that several modules share, and the real SLURM
cluster of the SLURM test modules.

A shared run is trained once for the session; a test only reads it, or copies it (shutil.copytree)
before it changes anything. The cluster: one per module, started on first use, stopped at the end.
Without the packages (or without root) the tests that use it skip and say why; with
MNIST_DIST_REQUIRE_SLURM=1 (CI) they fail instead.
"""

import os
import subprocess
from pathlib import Path

import pytest
from helpers import LENET_FIVE_STEPS, OFFLINE_SHORT, train_into
from slurm_cluster import SlurmCluster, leftover_processes, missing_programs, skip_or_fail


@pytest.fixture(scope="session")
def lenet_five_steps(tmp_path_factory, data_dir) -> Path:
    """A finished run of LENET_FIVE_STEPS (lenet on digits, 5 steps, checkpointed at its end)."""
    run_dir = tmp_path_factory.mktemp("lenet-five-steps") / "run"
    train_into(run_dir, data_dir, *LENET_FIVE_STEPS)
    return run_dir


@pytest.fixture(scope="session")
def wandb_env(tmp_path_factory) -> dict:
    """W&B's own folders (settings, artifact staging, cache) in a temporary home, not the user's."""
    home = tmp_path_factory.mktemp("wandb-home")
    return {
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_BASE_URL": "http://127.0.0.1:9",
    }  # nothing listens there: no W&B server is ever reached


@pytest.fixture(scope="session")
def offline_short_run(tmp_path_factory, data_dir, wandb_env) -> tuple[subprocess.CompletedProcess, Path]:
    """A finished run of OFFLINE_SHORT: (the completed train.py, its run dir)."""
    run_dir = tmp_path_factory.mktemp("offline-short") / "run"
    return train_into(run_dir, data_dir, *OFFLINE_SHORT, env=wandb_env), run_dir


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_programs()
    if missing:
        skip_or_fail(f"needs a SLURM to test against: {', '.join(missing)} not found (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        skip_or_fail("starting the test SLURM cluster (munged, slurmd) needs root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()
    assert not leftover_processes(str(cluster.folder)), "processes of the test cluster outlived it"
