#!/usr/bin/env bash
# Set up, then run the whole test suite (about 15-17 minutes on 2 CPU cores). Extra arguments go
# to pytest: scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
