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

from mnist_dist.errors import STOPS, report_error
from mnist_dist.evaluate_run import classify_files, evaluate_checkpoint, export_file, parse_args


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
        if args.predict:
            return classify_files(args)  # 2 when any file could not be classified, each said on its own line
        if args.export:
            return export_file(args)
        evaluate_checkpoint(args)  # torch and accelerate load only from here on
    except STOPS as error:  # bad input: one line, no traceback
        report_error(error)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
