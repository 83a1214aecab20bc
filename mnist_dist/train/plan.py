"""How far a run trains and what each epoch still has to train, worked out from counts alone (so a
unit test needs no processes): the optimizer steps of an epoch and of the run, where a resumed epoch
goes on, where --max-steps ends one, and when the run is over.
"""

import math
from dataclasses import dataclass, replace

from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.config import Config
from mnist_dist.train.selection import ModelSelection


@dataclass(frozen=True)
class EpochPlan:
    """What one call of Trainer.train_epoch trains. Steps count within the epoch, from 1."""

    epoch: int
    skip_batches: int  # batches of this epoch trained before a resume, on each rank
    first_step: int  # the first optimizer step still to take
    last_step: int  # the last step to take: the epoch's end, or earlier where --max-steps falls inside it


@dataclass(frozen=True)
class RunLength:
    epochs: int
    grad_accum_steps: int  # batches per optimizer step
    steps_per_epoch: int  # optimizer steps in a whole epoch: its batches on each rank / grad_accum_steps, rounded up
    total_steps: int  # epochs x steps_per_epoch, or --max-steps where that is fewer
    val_every: int = 1  # epochs between evaluations (--val-every); the run's last epoch is always evaluated

    @classmethod
    def of(cls, config: Config, batches_per_epoch: int) -> "RunLength":
        """The run's length for `batches_per_epoch` batches on each rank."""
        steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum_steps)
        total_steps = config.epochs * steps_per_epoch
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)
        return cls(config.epochs, config.grad_accum_steps, steps_per_epoch, total_steps, config.val_every)

    def reached(self, state: TrainingState) -> bool:
        """The epochs or --max-steps trained."""
        return state.epoch >= self.epochs or state.step >= self.total_steps

    def evaluates(self, state: TrainingState) -> bool:
        """Whether the epoch ending now (`state` after its steps) is evaluated: every val_every-th, and the last."""
        ended = replace(state, epoch=state.epoch + 1)
        return self.reached(ended) or ended.epoch % self.val_every == 0

    def plan_epoch(self, state: TrainingState) -> EpochPlan:
        """The rest of the current epoch: all of it, unless resuming inside it or --max-steps ends it early."""
        done = state.batches_done // self.grad_accum_steps  # its optimizer steps taken before a resume
        last = min(self.steps_per_epoch, done + self.total_steps - state.step)
        return EpochPlan(epoch=state.epoch, skip_batches=state.batches_done, first_step=done + 1, last_step=last)


def finished(length: RunLength, state: TrainingState, selection: ModelSelection) -> bool:
    """The epochs or --max-steps reached, or early stopping."""
    return selection.stopped_early() or length.reached(state)
