"""Stop signals become a request to checkpoint and exit, instead of killing the process mid-step.

SLURM sends SIGTERM before a job's time limit or preemption (and SIGUSR1 with --signal=USR1@N);
torchrun forwards SIGTERM to its workers. The handler only sets a flag: the trainer finishes the
current step, agrees with the other ranks on stopping (ranks may get the signal at different
steps), writes a checkpoint and exits with Preempted.exit_code.
"""

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number, frame) -> None:
        self.signal_name = signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
