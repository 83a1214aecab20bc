#!/usr/bin/env bash
# Set up, then run the whole test suite (12-14 minutes on 2 CPU cores, with the shared machine's load). Extra arguments go
# to pytest: scripts/test.sh tests/unit -x
#
# Two pytest workers (pytest-xdist): most tests wait on start-up, a collective's timeout or a SLURM
# queue for part of their time, so a second test fills the other core then (15 minutes on one worker).
# --dist loadgroup keeps the SLURM tests on one worker: the machine runs one local cluster at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
