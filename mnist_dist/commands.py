"""The two commands, train and evaluate: parse the command line, run, and end every expected stop
with one `error:` line and its exit code (errors.py).

train.py and evaluate.py call these from a checkout; `pip install -e .` installs them as the
commands mnist-dist-train and mnist-dist-evaluate (pyproject.toml). Each takes the arguments
after the program name, sys.argv[1:] when none are given (as a console script calls it), and
returns the exit code. Nothing heavy loads at the top: `--help` answers at once.

A reader that goes away (`python train.py | head -3`) costs neither command anything: the rest of
the output is dropped, and training or the report goes on and writes its files (ReaderMayLeave).
"""

import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO

from mnist_dist.cli import parse_command_line
from mnist_dist.config import stop_signal_names
from mnist_dist.errors import STOPS, Interrupted, report_error
from mnist_dist.evaluate.command import classify_files, evaluate_checkpoint, export_file, parse_args
from mnist_dist.train.allocator import keep_freed_memory
from mnist_dist.train.garbage import imports_uncollected
from mnist_dist.train.signals import StopRequest
from mnist_dist.train.stacks import StackDumps

DROPPED = (
    "note: stdout's reader has gone (a pipe such as `| head` ended): the rest of the output is dropped; "
    "the command goes on and writes its files."
)


class ReaderMayLeave:
    """stdout or stderr that outlives its reader. Python ignores SIGPIPE, so a write into a pipe whose
    reader has gone raises BrokenPipeError, and rich's Console then exits 1 without a word. Here the
    first such write points the stream's file descriptor at /dev/null (so what the stream still buffers,
    and Python's flush at exit, land there), says `note` once on stderr, and drops the rest."""

    def __init__(self, stream: IO[str], note: str = ""):
        self.stream, self.note, self.gone = stream, note, False

    def write(self, text: str) -> int:
        self.attempt(lambda: self.stream.write(text))
        return len(text)

    def flush(self) -> None:
        self.attempt(self.stream.flush)

    def attempt(self, action: Callable[[], object]) -> None:
        if self.gone:
            return
        try:
            action()
        except BrokenPipeError:
            self.gone = True
            with contextlib.suppress(OSError, ValueError):  # no descriptor (a test's StringIO): dropping is enough
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
                os.close(devnull)
            if self.note:
                with contextlib.suppress(OSError):  # stderr may have gone with it (2>&1 | head)
                    print(self.note, file=sys.stderr, flush=True)

    def __getattr__(self, name: str):  # isatty, fileno, encoding...: the stream's own
        return getattr(self.stream, name)


@contextlib.contextmanager
def output_may_close() -> Iterator[None]:
    """sys.stdout and sys.stderr as ReaderMayLeave for the command's length; stdout flushed at its end,
    so that a reader gone after the last line is found here rather than at Python's exit."""
    out, err = ReaderMayLeave(sys.stdout, DROPPED), ReaderMayLeave(sys.stderr)
    saved, (sys.stdout, sys.stderr) = (sys.stdout, sys.stderr), (out, err)
    try:
        yield
    finally:
        out.flush()
        sys.stdout, sys.stderr = saved


def reader_may_leave(command: Callable[..., int]) -> Callable[..., int]:
    """`command` run inside output_may_close."""

    @functools.wraps(command)
    def run(argv: list[str] | None = None) -> int:
        with output_may_close():
            code = command(argv)
        gc.freeze()  # what the command leaves dies with the process: the exit's collections skip it (train/garbage.py)
        return code

    return run


@reader_may_leave
def train(argv: list[str] | None = None) -> int:
    """Train one run, as `python train.py` and `mnist-dist-train` do."""
    try:
        config, sources = parse_command_line(argv)
    except (*STOPS, KeyboardInterrupt) as error:
        return report_stop(error)
    # The stop signals count from here to the command's end, from before torch loads and the processes
    # meet: one that comes during start-up ends the job at its next phase with one line (train/job.py),
    # and one that comes while a rank reports how it ended (a launcher signals the others as soon as one
    # exits) changes nothing. The dump signal is blocked first, while this is the process's only thread,
    # so that every thread made later inherits the block and one thread of its own waits for it
    # (train/stacks.py: a rank waiting in a collective dumps its stacks at once).
    with StackDumps(config.dump_signal) as stacks, StopRequest(stop_signal_names(config.stop_signals)) as stop:
        try:
            keep_freed_memory()  # before torch allocates: each step's tensors reuse the last step's pages
            # torch, torch._dynamo and accelerate load only from here on, their objects kept out of the garbage
            # collector's passes: 0.6 s of start-up, 0.9 s of the exit (train/garbage.py)
            with imports_uncollected():
                import torch._dynamo  # noqa: F401  torch.optim imports it on the first step, torchvision on import

                from mnist_dist.train import job

            job.train(config, sources, stop, stacks)
        except (*STOPS, KeyboardInterrupt) as error:
            return report_stop(error)
    return 0


def report_stop(error: Exception | KeyboardInterrupt) -> int:
    """Say how the command ended in its one line; return its exit code. STOPS: bad input, a stop signal,
    a diverged loss, a lost process. KeyboardInterrupt: a Ctrl-C while the options are parsed, or with
    SIGINT left out of --stop-signals (the stop request handles it otherwise)."""
    if isinstance(error, KeyboardInterrupt):
        error = Interrupted(
            "interrupted by Ctrl-C, which --stop-signals leaves out (or which came before the options were read): "
            "stopped at once, without a checkpoint; run the same command again to resume from the last complete one."
        )
    report_error(error)
    return error.exit_code


@reader_may_leave
def evaluate(argv: list[str] | None = None) -> int:
    """Evaluate a run, classify image files or export the model, as `python evaluate.py` and
    `mnist-dist-evaluate` do."""
    try:
        args = parse_args(argv)
        keep_freed_memory()
        if args.predict:
            return classify_files(args)  # 2 when any file could not be classified, each said on its own line
        if args.export:
            return export_file(args)  # a torch.export program of the model
        evaluate_checkpoint(args)  # torch and accelerate load only from here on
    except STOPS as error:  # bad input: one line, no traceback
        report_error(error)
        return error.exit_code
    return 0
