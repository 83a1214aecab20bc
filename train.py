"""Train an MNIST-family classifier on one or many processes.

    python train.py                                   # cnn on the built-in digits, one process
    python train.py --config configs/lenet.yaml --dataset fashion-mnist --epochs 3
    torchrun --standalone --nproc_per_node 2 train.py --dataset digits    # 2 CPU processes (gloo)
    accelerate launch --config_file launch/accelerate/multi_gpu.yaml train.py --dataset fashion-mnist

python train.py --help lists every option. Exit codes: 0 done, 2 bad input (one-line message).
"""

import sys

from mnist_dist.config import parse_config
from mnist_dist.errors import UserError, report_error


def main(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
        from mnist_dist.run import train  # torch, torchvision and accelerate load only from here on

        train(config)
    except UserError as error:
        report_error(error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
