"""What a run reports while it trains, besides the epoch rows: a metrics row every `log_every` optimizer
steps (metrics.jsonl and W&B), and on the console the live bar (a terminal) or, in logs, a line at
every tenth of the epoch's optimizer steps (gradient accumulation included) with the loss, samples/s
and the time left in the epoch.

The epoch's loss sum lives on the device; it is read (a host sync) only when a row or a line is due,
and for the live bar after the epoch's first step and then at most every BAR_SECONDS.
"""

import math
import time

from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.train.results import EpochSums

LINES_PER_EPOCH = 10
# The live bar's loss and speed: a fresh reading every half second is what a person can follow, and one
# host sync per half second costs nothing next to the steps in between.
BAR_SECONDS = 0.5


class Interval:
    """The mean loss and the speed since the last reading.

    `before`: samples counted in `loss_sum` before this job started the interval (a run resumed since
    the last metrics row): they count in the mean loss, not in the speed, which is this job's."""

    def __init__(self, loss_sum: float, before: int = 0):
        self.restart(loss_sum)
        self.before = before

    def restart(self, loss_sum: float) -> None:
        self.loss_sum, self.samples, self.before, self.started = loss_sum, 0, 0, time.perf_counter()

    def seconds(self) -> float:
        """Since the last reading."""
        return time.perf_counter() - self.started

    def read(self, loss_sum: float, world_size: int) -> tuple[float, float]:
        """(mean loss per sample, samples/s over all processes) since the last reading; starts the next."""
        elapsed = time.perf_counter() - self.started
        loss = (loss_sum - self.loss_sum) / max(self.before + self.samples, 1)
        speed = self.samples * world_size / elapsed if elapsed else 0.0
        self.restart(loss_sum)
        return loss, speed


class ProgressReport:
    def __init__(self, console: TrainingConsole, tracker: Tracker, log_every: int, world_size: int):
        self.console, self.tracker = console, tracker
        self.log_every, self.world_size = log_every, world_size

    def start_epoch(self, epoch: int, epochs: int, first_step: int, last_step: int, sums: EpochSums) -> None:
        """An epoch (0-based `epoch`) whose steps `first_step`..`last_step` (from 1) are to train; `sums`:
        its running sums (those of the steps before a resume, or zero)."""
        self.epoch, self.first_step, self.last_step = epoch, first_step, last_step
        self.every_line = math.ceil(last_step / LINES_PER_EPOCH)  # optimizer steps between lines
        self.console.start_epoch(epoch, epochs, last_step, completed=first_step - 1)
        loss = sums.loss.item()
        # The metrics row goes on from the epoch's last row (before a resume, if any), as if never stopped.
        self.row = Interval(sums.row_loss.item(), before=int((sums.samples - sums.row_samples).item()))
        self.line, self.bar = Interval(loss), Interval(loss)
        self.started = time.perf_counter()

    def after_step(self, step: int, step_in_epoch: int, samples: int, sums: EpochSums, lr: float) -> None:
        """After global optimizer `step`, the `step_in_epoch`-th of the epoch, which trained `samples` here."""
        for interval in (self.row, self.line, self.bar):
            interval.samples += samples
        self.console.advance()
        if self.console.shows_bar and (step_in_epoch == self.first_step or self.bar.seconds() >= BAR_SECONDS):
            self.console.show_speed(*self.bar.read(sums.loss.item(), self.world_size))
        if step % self.log_every == 0:
            loss, speed = self.row.read(sums.loss.item(), self.world_size)
            sums.mark_row()
            self.tracker.log(
                "step", step, {"epoch": self.epoch + 1, "loss": loss, "lr": lr, "samples_per_second": speed}
            )
        if step_in_epoch % self.every_line == 0 and step_in_epoch < self.last_step:  # the epoch row ends it
            loss, speed = self.line.read(sums.loss.item(), self.world_size)
            done = step_in_epoch - self.first_step + 1
            left = (time.perf_counter() - self.started) / done * (self.last_step - step_in_epoch)
            self.console.progress_line(step_in_epoch, loss, lr, speed, left)
