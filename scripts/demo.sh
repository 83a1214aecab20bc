#!/usr/bin/env bash
# Set up, then train the default CNN on the built-in `digits` dataset with 2 CPU processes
# (one gloo group, one thread each). Extra arguments go to train.py: scripts/demo.sh --epochs 1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # 2 processes x 1 thread on a 2-core machine
exec .venv/bin/torchrun --standalone --nproc_per_node 2 train.py --dataset digits --cpu "$@"
