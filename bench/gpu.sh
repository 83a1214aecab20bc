#!/usr/bin/env bash
# The GPU check in one command: the `cuda` tests, then the MFU table (every model's training step against
# the GPU's bf16 matmul peak), the throughput, overhead, time-to-accuracy and
# records (configs/fashion-92.yaml and fashion-93.yaml, whole command) benchmarks on the GPU; figures
# in bench/results/gpu-*.json (and in $OUT, when set, for the device tool). No network and no wandb
# needed; about 8 minutes at most on one GPU.
#
#   Here, once (Fashion-MNIST travels with the working tree; data/ is ignored by git):
#     mkdir -p data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz data/FashionMNIST/raw/
#   There:  bash bench/gpu.sh          (device tool: carry ["data/FashionMNIST"], timeout_s 560)
#
# Python: .venv/bin/python when there is one, else $PYTHON, else python3 (a GPU image's own, with torch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=${PYTHON:-python3}; fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
results=bench/results
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0), torch.__version__)"
[ -f data/FashionMNIST/raw/train-images-idx3-ubyte.gz ] || { echo "data/FashionMNIST/raw/ is missing: see the top of bench/gpu.sh" >&2; exit 2; }
status=0
"$py" -m pytest -m cuda tests/integration/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$results/gpu-tests.log" || status=1
timeout 40 "$py" bench/mfu.py --device cuda --rounds 5 --out "$results/gpu-mfu.json" | tee "$results/gpu-mfu.txt" || status=1
timeout 150 "$py" bench/throughput.py --data-dir data --epochs 2 --out "$results/gpu-throughput.json" || status=1
timeout 120 "$py" bench/overhead.py --data-dir data --rounds 10 --out "$results/gpu-overhead.json" || status=1
timeout 120 "$py" bench/time_to_accuracy.py --data-dir data --repeats 1 --recipes "default (configs/cnn.yaml)" \
    --out "$results/gpu-time_to_accuracy.json" || status=1
timeout 100 "$py" bench/records.py --data-dir data --seeds 2 --configs configs/fashion-92.yaml configs/fashion-93.yaml \
    --out "$results/gpu-records.json" || status=1
if [ -n "${OUT:-}" ]; then cp "$results"/gpu-* "$OUT"/; fi
exit $status
