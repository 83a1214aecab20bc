"""Evaluate a trained run on a whole split, with a visual report; or classify your own image files.

    python evaluate.py --checkpoint runs/<name>                    # report in runs/<name>/eval/
    python evaluate.py --checkpoint runs/<name>/model.safetensors --split train --out /tmp/report
    torchrun --standalone --nproc_per_node 2 evaluate.py --checkpoint runs/<name>   # same numbers, 2 processes
    python evaluate.py --checkpoint runs/<name> --predict my_digit.png photos/ [--json]
    python evaluate.py --checkpoint runs/<name> --export model.pt2       # a torch.export program

python evaluate.py --help lists every option. Exit codes: 0 done, 2 bad input (one line per problem,
starting with `error:`).
"""

import sys

# The same function as the installed mnist-dist-evaluate command (pyproject.toml); tests call main(argv).
from mnist_dist.commands import evaluate as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
