"""The ranks' agreement on whether training goes on. Each rank knows only its own troubles: a stop
signal that reached it, a NaN or inf in its loss, a failed write of metrics.jsonl (the main process).
One all-gather of three flags tells every rank all of them, so that all stop at the same step, the
same way: a failed write or a non-finite loss ends the run (no checkpoint: never one of a diverged
run), a stop signal writes a checkpoint first. The same all-gather carries each rank's step times
since the last check (train/stragglers.py: is one rank slowing the job?).
"""

import torch
from accelerate import Accelerator

from mnist_dist.checkpoint.writer import CheckpointWriter
from mnist_dist.distributed import fail_together
from mnist_dist.errors import Diverged, Preempted
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.train.results import EpochSums
from mnist_dist.train.signals import StopRequest
from mnist_dist.train.stragglers import Stragglers

# Optimizer steps between the ranks' checks for a stop signal and a non-finite loss. Each check
# is one tiny all-gather and a host sync, so not every step; at ~100 steps/s that is 0.1 s.
# A NaN or inf loss cannot hide until the check: it stays in the epoch's loss sum. On gloo, an
# all-gather of 7 numbers a rank measured cheaper than the all-reduce of the 3 flags it replaced on gloo
# (486 against 691 us a check, bench/stragglers.py).
CHECK_EVERY = 10


class Agreement:
    def __init__(
        self,
        accelerator: Accelerator,
        sums: EpochSums,
        tracker: Tracker,
        stop: StopRequest,
        checkpoints: CheckpointWriter,
        stragglers: Stragglers,
    ):
        self.accelerator = accelerator
        self.sums = sums  # this rank's epoch sums: their loss is NaN or inf once any step's was
        self.tracker = tracker  # its `failure`: a row of metrics.jsonl that could not be written
        self.stop = stop  # its `signal_name`: a stop signal that reached this rank
        self.checkpoints = checkpoints  # what a stop saves, and the last good checkpoint a message names
        self.stragglers = stragglers  # this rank's step times to send; every rank's, gathered

    def check(self, step: int, force: bool = False) -> None:
        """Every CHECK_EVERY steps, or when forced (at an epoch's end, before a checkpoint), all ranks
        agree: stop on a failed write of metrics.jsonl or a NaN/inf loss, or checkpoint and stop when a
        stop signal reached any rank. Returns only when none did."""
        if not force and step % CHECK_EVERY:
            return
        (nonfinite, write_failed, stop), times = self.gather()
        if write_failed:  # before a checkpoint: one holding a step whose row was lost would resume without it
            fail_together(self.accelerator, self.tracker.failure)
        if nonfinite:
            kept = self.checkpoints.what_is_kept("the last good checkpoint is {}")
            raise Diverged(
                f"the training loss became NaN or infinite by step {step}; {kept}. Lower --lr, or set --max-grad-norm."
            )
        if self.stragglers.gathered(step, times) and (force or stop):
            # A "ranks" row written now, and a checkpoint may follow at once (the same on every rank; rare:
            # a --log-every step passed since the last check). One more collective, so that no checkpoint
            # holds a step whose row was lost.
            fail_together(self.accelerator, self.tracker.failure)
        if stop:
            self.stop_with_checkpoint(step)

    def gather(self) -> tuple[list[bool], list[list[float]]]:
        """([any rank's loss non-finite, the main process's write failed, a stop signal on any rank],
        each rank's StepTimer.take()): one all-gather of a row of 7 numbers per rank, one host sync."""
        nonfinite = ~torch.isfinite(self.sums.loss)  # NaN and inf stay in a sum of non-negative losses
        local = [self.tracker.failure is not None, self.stop.signal_name is not None, *self.stragglers.timer.take()]
        device = self.accelerator.device
        mine = torch.cat([nonfinite.double().view(1), torch.tensor(local, device=device, dtype=torch.float64)])
        ranks = self.accelerator.gather(mine).view(self.accelerator.num_processes, -1).tolist()  # a row per rank
        return [any(row[flag] > 0 for row in ranks) for flag in range(3)], [row[3:] for row in ranks]

    def stop_with_checkpoint(self, step: int) -> None:
        """Every rank saves the same step (a dry run saves nothing), then ends with Preempted."""
        where = self.checkpoints.save()
        signal_name = self.stop.signal_name or "a stop signal (on another rank)"
        saved = (
            f"checkpoint {where} written; run the same command again to resume" if where else "no run dir to save to"
        )
        raise Preempted(f"stopped by {signal_name} after step {step}: {saved}.")
