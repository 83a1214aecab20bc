#!/usr/bin/env bash
# Create .venv in the repo root and install the pinned requirements into it.
# Idempotent: a second run with unchanged requirement files installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: mnist-dist needs Python 3.10 or newer as \$PYTHON or python3." >&2
    exit 1
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # none yet, or half-made by a failed run
    rm -rf .venv
    "$python" -m venv .venv || { echo "error: could not create .venv (on Debian: apt-get install python3-venv)." >&2; exit 1; }
fi

stamp=".venv/.installed-$(cat requirements.txt requirements-test.txt constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "Installing requirements into .venv (torch is large: a few minutes the first time)..."
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt -c constraints.txt
    rm -f .venv/.installed-*
    touch "$stamp"
fi
