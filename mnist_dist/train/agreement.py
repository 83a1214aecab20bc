"""The ranks' agreement on whether training goes on. Each rank knows only its own troubles: a stop
signal that reached it, a NaN or inf in its loss, a failed write of metrics.jsonl (the main process).
One all-reduce of three flags tells every rank all of them, so that all stop at the same step, the
same way: a failed write or a non-finite loss ends the run (no checkpoint: never one of a diverged
run), a stop signal writes a checkpoint first.
"""

import torch
from accelerate import Accelerator

from mnist_dist.checkpoint.writer import CheckpointWriter
from mnist_dist.distributed import fail_together
from mnist_dist.errors import Diverged, Preempted
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.train.results import EpochSums
from mnist_dist.train.signals import StopRequest

# Optimizer steps between the ranks' checks for a stop signal and a non-finite loss. Each check
# is one tiny all-reduce and a host sync, so not every step; at ~100 steps/s that is 0.1 s.
# A NaN or inf loss cannot hide until the check: it stays in the epoch's loss sum.
CHECK_EVERY = 10


class Agreement:
    def __init__(
        self,
        accelerator: Accelerator,
        sums: EpochSums,
        tracker: Tracker,
        stop: StopRequest,
        checkpoints: CheckpointWriter,
    ):
        self.accelerator = accelerator
        self.sums = sums  # this rank's epoch sums: their loss is NaN or inf once any step's was
        self.tracker = tracker  # its `failure`: a row of metrics.jsonl that could not be written
        self.stop = stop  # its `signal_name`: a stop signal that reached this rank
        self.checkpoints = checkpoints  # what a stop saves, and the last good checkpoint a message names

    def check(self, step: int, force: bool = False) -> None:
        """Every CHECK_EVERY steps, or when forced (at an epoch's end, before a checkpoint), all ranks
        agree: stop on a failed write of metrics.jsonl or a NaN/inf loss, or checkpoint and stop when a
        stop signal reached any rank. Returns only when none did."""
        if not force and step % CHECK_EVERY:
            return
        nonfinite = ~torch.isfinite(self.sums.loss)  # NaN and inf stay in a sum of non-negative losses
        local = [self.tracker.failure is not None, self.stop.signal_name is not None]
        device = self.accelerator.device
        flags = torch.cat([nonfinite.double().view(1), torch.tensor(local, device=device, dtype=torch.float64)])
        nonfinite, write_failed, stop = (value > 0 for value in self.accelerator.reduce(flags, "sum").tolist())
        if write_failed:  # before a checkpoint: one holding a step whose row was lost would resume without it
            fail_together(self.accelerator, self.tracker.failure)
        if nonfinite:
            kept = self.checkpoints.what_is_kept("the last good checkpoint is {}")
            raise Diverged(
                f"the training loss became NaN or infinite by step {step}; {kept}. Lower --lr, or set --max-grad-norm."
            )
        if stop:
            self.stop_with_checkpoint(step)

    def stop_with_checkpoint(self, step: int) -> None:
        """Every rank saves the same step (a dry run saves nothing), then ends with Preempted."""
        where = self.checkpoints.save()
        signal_name = self.stop.signal_name or "a stop signal (on another rank)"
        saved = (
            f"checkpoint {where} written; run the same command again to resume" if where else "no run dir to save to"
        )
        raise Preempted(f"stopped by {signal_name} after step {step}: {saved}.")
