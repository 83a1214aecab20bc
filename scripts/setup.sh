#!/usr/bin/env bash
# Create .venv in the repo root and install the pinned requirements into it, then this checkout as the
# package (editable: `import mnist_dist` and mnist-dist-train work from any folder, and edits here apply
# at once). Idempotent: a second run with unchanged requirement files and pyproject.toml installs nothing.
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

stamp=".venv/.installed-$(cat requirements.txt requirements-test.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "Installing requirements into .venv (torch is large: a few minutes the first time)..."
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt -c constraints.txt
    # The package itself, offline: its dependencies are the requirements above, and the build uses their
    # setuptools (77+, requirements-test.txt) instead of downloading one.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --no-index -e .
    rm -f .venv/.installed-*
    touch "$stamp"
fi
