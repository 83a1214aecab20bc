"""Stop signals become a request to checkpoint and exit, instead of killing the process mid-step.

SLURM sends SIGTERM before a job's time limit or preemption (and SIGUSR1 with --signal=USR1@N);
torchrun forwards SIGTERM and SIGINT to its workers; Ctrl-C sends SIGINT. Which signals count is
--stop-signals (default USR1,TERM,INT): NCCL and some container runtimes use SIGUSR1 themselves, so a
cluster may send USR2 instead, and a signal left out keeps its default action. The handler only sets a
flag: the trainer finishes the current step, agrees with the other ranks on stopping (ranks may get
the signal at different steps), writes a checkpoint and exits with Preempted.exit_code (3).

A second Ctrl-C aborts at once (exit 130), without a checkpoint. One Ctrl-C in a terminal reaches
the workers twice under torchrun (from the terminal, and forwarded by torchrun a moment later), so
a SIGINT counts as a second one only when it comes REPEAT_SECONDS or more after the first.
"""

import os
import signal
import threading
import time

from mnist_dist.config import FIELDS
from mnist_dist.errors import Interrupted, say_once

DEFAULT_STOP_SIGNALS = tuple(FIELDS["stop_signals"].default.split(","))  # train.py's default, --stop-signals
REPEAT_SECONDS = 1.0  # a person's second Ctrl-C comes later than a launcher's forwarded copy of the first
INTERRUPTED_AGAIN = (
    "interrupted again: stopped at once, without a checkpoint; the last complete checkpoint is kept. "
    "Run the same command again to resume from it."
)


class StopRequest:
    def __init__(self, names: tuple[str, ...] = DEFAULT_STOP_SIGNALS):
        self.numbers = [signal.Signals[f"SIG{name}"] for name in names]  # config.stop_signal_names checked them
        self.signal_name: str | None = None
        self.interrupted_at: float | None = None  # when the first SIGINT came (time.monotonic)
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
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
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def abort() -> None:
    """The second Ctrl-C: leave now, in the middle of whatever runs (checkpoints appear whole or not at all).
    Every rank got it from the terminal; the first to get here says so (errors.say_once)."""
    say_once(f"error: {INTERRUPTED_AGAIN}")
    os._exit(Interrupted.exit_code)  # 130, as for Ctrl-C outside the loop
