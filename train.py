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

from mnist_dist.cli import parse_config
from mnist_dist.errors import STOPS, Interrupted, report_error


def main(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
        from mnist_dist.run import train  # torch, torchvision and accelerate load only from here on

        train(config)
    except STOPS as error:  # bad input, a stop signal, a diverged loss: one line, no traceback
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C before or after the training loop, which checkpoints and exits 3 itself
        error = Interrupted("interrupted by Ctrl-C outside the training loop; no checkpoint was written for it.")
        report_error(error)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
