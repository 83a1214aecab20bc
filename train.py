"""Train an MNIST-family classifier on one or many processes.

    python train.py                                   # cnn on the built-in digits, one process
    python train.py --config configs/lenet.yaml --dataset fashion-mnist --epochs 3
    torchrun --standalone --nproc_per_node 2 train.py --dataset digits    # 2 CPU processes (gloo)
    accelerate launch --config_file launch/accelerate/multi_gpu.yaml train.py --dataset fashion-mnist

python train.py --help lists every option. Exit codes (mnist_dist/errors.py): 0 finished, 1 crashed,
2 bad input, 3 stopped by a signal or Ctrl-C after a checkpoint (run again to resume), 4 the loss diverged,
5 another process stopped responding or ended (--collective-timeout),
130 interrupted without a checkpoint (a second Ctrl-C).
"""

import sys

# The same function as the installed mnist-dist-train command (pyproject.toml); tests call main(argv).
from mnist_dist.commands import train as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
