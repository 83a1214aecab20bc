"""Where a run's time went: summary.json's "time_split", in seconds of this job (a resumed run counts from
its own start), so that a record's whole-process time can be read part by part.

    start_up    the process's start (the interpreter, imports, the processes meeting, the data, the
                model) to the first step
    training    the epochs' training loops: the steps, and the checkpoints written inside an epoch
    validation  each epoch's evaluation (of the validation split, or of test when nothing is held out)
    epoch_ends  the rest of the loop: logging each epoch's row, choosing the kept weights, epoch-end checkpoints
    end         after the loop: the kept weights' test evaluation and the final files made ready (the
                files' writing itself follows, as summary.json is the last of them)
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path


def process_seconds() -> float | None:
    """Seconds since this process started, from the kernel (Linux: /proc/self/stat's start time, in clock
    ticks since boot, against the boot clock); None where it does not tell (macOS, Windows)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 (starttime); fields[0] is field 3
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc, or no boot clock
        return None


@dataclass
class TimeSplit:
    start_up: float | None = None
    training: float = 0.0
    validation: float = 0.0
    end: float = 0.0
    samples: int = 0  # what this job trained, all processes: a resumed epoch's earlier samples are not its own

    def add_epoch(self, samples: int, seconds: float) -> None:
        """An epoch's training loop: `samples` trained by all processes in `seconds`."""
        self.samples += samples
        self.training += seconds

    @property
    def samples_per_second(self) -> float | None:
        """The job's overall training speed (all processes), None before it trained a step."""
        return self.samples / self.training if self.training and self.samples else None

    def as_dict(self, fit_seconds: float) -> dict[str, float | None]:
        """summary.json's split; `fit_seconds`: Trainer.fit's whole time, of which the rest is the epochs' ends."""
        epoch_ends = max(0.0, fit_seconds - self.training - self.validation)
        return {
            "start_up": self.start_up,
            "training": self.training,
            "validation": self.validation,
            "epoch_ends": epoch_ends,
            "end": self.end,
        }
