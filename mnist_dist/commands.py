"""The two commands, train and evaluate: parse the command line, run, and end every expected stop
with one `error:` line and its exit code (errors.py).

train.py and evaluate.py call these from a checkout; `pip install -e .` installs them as the
commands mnist-dist-train and mnist-dist-evaluate (pyproject.toml). Each takes the arguments
after the program name, sys.argv[1:] when none are given (as a console script calls it), and
returns the exit code. Nothing heavy loads at the top: `--help` answers at once.
"""

from mnist_dist.cli import parse_command_line
from mnist_dist.errors import STOPS, Interrupted, report_error
from mnist_dist.evaluate.command import classify_files, evaluate_checkpoint, export_file, parse_args


def train(argv: list[str] | None = None) -> int:
    """Train one run, as `python train.py` and `mnist-dist-train` do."""
    try:
        config, sources = parse_command_line(argv)
        from mnist_dist.train import job  # torch, torchvision and accelerate load only from here on

        job.train(config, sources)
    except STOPS as error:  # bad input, a stop signal, a diverged loss: one line, no traceback
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C before or after the training loop, which checkpoints and exits 3 itself
        error = Interrupted("interrupted by Ctrl-C outside the training loop; no checkpoint was written for it.")
        report_error(error)
        return error.exit_code
    return 0


def evaluate(argv: list[str] | None = None) -> int:
    """Evaluate a run, classify image files or export the model, as `python evaluate.py` and
    `mnist-dist-evaluate` do."""
    try:
        args = parse_args(argv)
        if args.predict:
            return classify_files(args)  # 2 when any file could not be classified, each said on its own line
        if args.export:
            return export_file(args)  # a torch.export program of the model
        evaluate_checkpoint(args)  # torch and accelerate load only from here on
    except STOPS as error:  # bad input: one line, no traceback
        report_error(error)
        return error.exit_code
    return 0
