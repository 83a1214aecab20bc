#!/usr/bin/env bash
# Set up, then run the whole test suite (about 9-10 minutes on 2 CPU cores, more when the shared machine is
# busy). Extra arguments go to pytest: scripts/test.sh tests/unit -x
#
# Two pytest workers (pytest-xdist): most tests wait on start-up, a collective's timeout or a SLURM
# queue for part of their time, so a second test fills the other core then (on 2026-12-07 one worker
# took 15 minutes, two 12-14).
# --dist loadgroup keeps the SLURM tests on one worker: the machine runs one local cluster at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
