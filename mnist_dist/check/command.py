"""`python -m mnist_dist.check`: is this launch sound? Start it as the job will be started, with the job's
train.py options, before the job:

    torchrun --nproc-per-node 4 -m mnist_dist.check --model cnn --batch-size 128
    accelerate launch --config_file launch/accelerate/cpu.yaml --num_processes 2 -m mnist_dist.check
    sbatch launch/slurm/check.sbatch --dataset mnist --data-dir data
    python -m mnist_dist.check --json check.json

It checks, in order: every rank as its launcher set it and as the group formed (the launch), an
all-reduce of known values at several sizes, the training shards, the real trainer's steps on N
processes against one process's on the global batch (equivalence), and each rank's time per step. The
main process prints one table. Exit 0 when every check holds; 1 and one line `error: check failed:
CHECK: WHY` for the first that does not; 2 for bad options, as train.py.
"""

import argparse
import re
from pathlib import Path

from mnist_dist import cli
from mnist_dist.check.report import CheckFailed
from mnist_dist.config import Config
from mnist_dist.errors import ConfigError, Interrupted, UserError, report_error

PROG = "python -m mnist_dist.check"
# Where the check's defaults differ from train.py's: a model that steps in milliseconds, and a group that
# does not form, or a process that stops answering, reported within a minute (train.py: 300 s on CPUs, 600 s on GPUs).
CHECK_DEFAULTS = {"model": "lenet", "collective_timeout": 60}
CHECK_OPTIONS = ("steps", "sizes", "json", "expect_processes")
DEFAULT_SIZES = "4K,256K,4M"  # a small message (latency), a gradient bucket's size, a large one (bandwidth)
MAX_BYTES = 1 << 30  # per size: the buffer is allocated twice on every rank
SIZE = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
DESCRIPTION = (
    "Is this launch sound? Start it as the job will be started (torchrun, accelerate launch, srun), with the job's "
    "train.py options: every rank as launched, an all-reduce of known values, the training shards, the trainer's "
    "steps on N processes against one process's, each rank's time per step. Exit 0 when all hold, 1 when one fails."
)
EPILOG = """examples:
  torchrun --nproc-per-node 2 -m mnist_dist.check                   # 2 processes, lenet on digits
  torchrun --nproc-per-node 4 -m mnist_dist.check --config configs/cnn.yaml --dataset mnist --data-dir data
  sbatch launch/slurm/check.sbatch --json check.json                 # as cpu.sbatch starts train.py

Every other option is train.py's (python train.py --help): the job's, which the check trains with."""


def parse_sizes(text: str) -> list[int]:
    """--sizes 4K,256K,4M as bytes (K, M, G: 2^10, 2^20, 2^30), each a whole number of float32 values."""
    sizes = []
    for part in text.split(","):
        match = SIZE.fullmatch(part.strip())
        if match is None:
            raise ConfigError(f"--sizes {text}: '{part}' is not a size: pass bytes such as 4K,256K,4M (K, M, G).")
        size = int(match[1]) * UNITS[match[2].upper()]
        if not 4 <= size <= MAX_BYTES or size % 4:
            raise ConfigError(
                f"--sizes: {part} is not a multiple of 4 bytes (float32) from 4 to 1G: pass one, such as 4K."
            )
        sizes.append(size)
    return sizes


def build_parser() -> cli.Parser:
    """train.py's parser (the job's options: --config, --model, --batch-size, --cpu, ...) with the check's own."""
    parser = cli.build_parser()
    parser.prog, parser.epilog = PROG, EPILOG
    parser.description = DESCRIPTION
    parser.usage = "%(prog)s [--steps K] [--sizes LIST] [--json PATH] [--expect-processes N] [train.py OPTION ...]"
    check = parser.add_argument_group(
        "the check", "its own options; its defaults where train.py's differ: --model lenet, --collective-timeout 60"
    )
    check.add_argument("--steps", type=int, default=3, metavar="K", help="optimizer steps compared (default: 3)")
    check.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        metavar="LIST",
        help=f"all-reduce sizes in bytes, K M G (default: {DEFAULT_SIZES})",
    )
    check.add_argument(
        "--json", default=None, metavar="PATH", help="also write the table and the verdict to PATH as JSON, for CI"
    )
    check.add_argument(
        "--expect-processes",
        type=int,
        default=0,
        metavar="N",
        help="fail unless the group has N processes (default: 0, as many as the launcher says it started)",
    )
    return parser


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Config, dict[str, str]]:
    """The check's options (sizes in bytes), the job's Config as train.py layers it (the check's own
    defaults below the model's recipe), and what set each option (train/job.py's resolve reads it)."""
    flags = cli.parsed_flags(build_parser(), argv)
    options = argparse.Namespace(**{name: flags.pop(name) for name in CHECK_OPTIONS})
    if options.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {options.steps}: pass --steps 3 (the default), say.")
    if options.expect_processes < 0:
        raise ConfigError(f"--expect-processes must be 0 (any) or more, got {options.expect_processes}.")
    options.sizes = parse_sizes(options.sizes)
    options.json = Path(options.json) if options.json else None
    config, sources = cli.layered_config(flags, ("the check", CHECK_DEFAULTS))
    return options, config, sources


def main(argv: list[str] | None = None) -> int:
    try:
        options, config, sources = parse(argv)
        from mnist_dist.check.run import check  # torch and accelerate load only from here on

        check(config, sources, options)
    except (UserError, CheckFailed) as error:
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        report_error(Interrupted("interrupted by Ctrl-C before the check's end: run it again for its verdict."))
        return Interrupted.exit_code
    return 0
