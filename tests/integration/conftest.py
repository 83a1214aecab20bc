"""The real SLURM cluster of the SLURM test modules: one per module, started on first use, stopped at the end.

Without the packages (or without root) the tests that use it skip and say why; with
MNIST_DIST_REQUIRE_SLURM=1 (CI) they fail instead.
"""

import os

import pytest
from slurm_cluster import SlurmCluster, leftover_processes, missing_programs, skip_or_fail


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
