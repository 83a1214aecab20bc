"""Stop signals become a request to checkpoint and exit, instead of killing the process mid-step.

SLURM sends SIGTERM before a job's time limit or preemption (and SIGUSR1 with --signal=USR1@N);
torchrun forwards SIGTERM and SIGINT to its workers; Ctrl-C sends SIGINT. Which signals count is
--stop-signals (default USR1,TERM,INT): NCCL and some container runtimes use SIGUSR1 themselves, so a
cluster may send USR2 instead, and a signal left out keeps its default action. The handler only sets a
flag: the trainer finishes the current step, agrees with the other ranks on stopping (ranks may get
the signal at different steps), writes a checkpoint and exits with Preempted.exit_code (3).

The train command installs the handlers as soon as it has parsed its options, before torch loads and
the processes meet (commands.train), and keeps them to its end, so that no stop signal kills a job
silently. Before the first step there is nothing to save: the job ends at the next of its start-up
phases (train/job.py), on every rank together, with `before_first_step`'s line. A signal during the
final evaluation and writes lets them finish (a run's record is whole or absent), then ends the job
with `after_the_final_files`' line.

A second Ctrl-C aborts at once (exit 130), without a checkpoint. One Ctrl-C in a terminal reaches
the workers twice under torchrun (from the terminal, and forwarded by torchrun a moment later), so
a SIGINT counts as a second one only when it comes REPEAT_SECONDS or more after the first.
"""

import os
import signal
import threading
import time

from mnist_dist.config import FIELDS
from mnist_dist.errors import Interrupted, Preempted, say_once

DEFAULT_STOP_SIGNALS = tuple(FIELDS["stop_signals"].default.split(","))  # train.py's default, --stop-signals
REPEAT_SECONDS = 1.0  # a person's second Ctrl-C comes later than a launcher's forwarded copy of the first
INTERRUPTED_AGAIN = (
    "interrupted again: stopped at once, without a checkpoint; the last complete checkpoint is kept. "
    "Run the same command again to resume from it."
)


class StopRequest:
    """The handlers of the chosen signals while inside `with`, and the first stop signal that came.
    Re-entrant: the innermost `with` (Trainer.fit's, inside the command's) changes nothing, and the
    outermost one installs the handlers and puts the previous ones back."""

    def __init__(self, names: tuple[str, ...] = DEFAULT_STOP_SIGNALS):
        self.numbers = [signal.Signals[f"SIG{name}"] for name in names]  # config.stop_signal_names checked them
        self.signal_name: str | None = None
        self.interrupted_at: float | None = None  # when the first SIGINT came (time.monotonic)
        self.previous = {}
        self.depth = 0  # how many `with` blocks are open

    def __enter__(self) -> "StopRequest":
        self.depth += 1
        outermost = self.depth == 1
        if outermost and threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for number in self.numbers:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number, frame) -> None:
        if number == signal.SIGINT:
            now = time.monotonic()
            if self.interrupted_at is not None and now - self.interrupted_at >= REPEAT_SECONDS:
                abort()
            self.interrupted_at = self.interrupted_at or now
        self.signal_name = self.signal_name or signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0:
            for number, handler in self.previous.items():
                signal.signal(number, handler)
            self.previous = {}

    def before_first_step(self) -> Preempted | None:
        """The stop that ends a job asked to stop during start-up, where nothing is saved; None when none was asked."""
        if self.signal_name is None:
            return None
        return Preempted(
            f"stopped by {self.signal_name} during start-up, before the first step: nothing to checkpoint yet; "
            "run the same command again to start."
        )

    def after_the_final_files(self, record: str) -> Preempted | None:
        """The stop that ends a job asked to stop during its final evaluation and writes, which it finished
        first (`record`: what the run's folder now holds); None when none was asked."""
        if self.signal_name is None:
            return None
        return Preempted(
            f"stopped by {self.signal_name} during the final evaluation and writes: they were finished first, {record}."
        )


def abort() -> None:
    """The second Ctrl-C: leave now, in the middle of whatever runs (checkpoints appear whole or not at all).
    Every rank got it from the terminal; the first to get here says so (errors.say_once)."""
    say_once(f"error: {INTERRUPTED_AGAIN}")
    os._exit(Interrupted.exit_code)  # 130, as for a Ctrl-C that --stop-signals leaves out
