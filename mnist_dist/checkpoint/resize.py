"""Resuming on another number of processes: the run keeps its global batch (processes x per-process batch x
gradient accumulation) and goes on at the exact global sample where the checkpoint stopped.

Why it can: DistributedSampler deals each epoch's permutation round-robin, rank r taking positions r, r + N,
r + 2N, ..., so rank r's j-th batch of b samples holds positions [j*b*N, (j+1)*b*N) of the permutation, one
r-th of them. An optimizer step of G = N*b*a samples (a batches accumulated) therefore trains positions
[s*G, (s+1)*G) of the epoch's permutation, whatever N is: the same samples in the same global batches, and
the average gradient over them (every rank's batch has the same size). Only an epoch's last, partial batch
can differ: the sampler pads the permutation to a multiple of N with its first samples. An epoch has
ceil(L / G) steps for L samples on any number of processes, so the step count and the schedule hold.

What does not carry over exactly: BatchNorm normalises over each process's batch, so another per-process
batch changes its statistics (docs/CHECKPOINTS.md has the measured effect). Nothing in training draws from
the ranks' own generators today (no model has dropout; augmentation is keyed by seed, epoch and sample); a
new rank takes the generators of old rank (rank mod old world size).
"""

import dataclasses
import math
from dataclasses import dataclass

import torch

from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.config import Config
from mnist_dist.errors import UserError


class GlobalBatchCannotBeKept(UserError):
    """The checkpoint's global batch does not divide among this run's processes."""

    same_on_every_rank = True  # every rank works it out from the same checkpoint


@dataclass(frozen=True)
class Layout:
    """How a run splits its global batch: processes x per-process batch x accumulated batches."""

    world_size: int
    batch_size: int
    grad_accum_steps: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size * self.grad_accum_steps

    def batches_per_epoch(self, samples: int) -> int:
        """Each rank's batches in an epoch of `samples` (the sampler pads to a multiple of the world size)."""
        return math.ceil(math.ceil(samples / self.world_size) / self.batch_size)


def saved_layout(state: TrainingState, saved_config: dict) -> Layout:
    return Layout(state.world_size, saved_config["batch_size"], saved_config["grad_accum_steps"])


def processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def keep_global_batch(saved: Layout, world_size: int) -> Layout:
    """This run's layout on `world_size` processes with the saved global batch: the same accumulation if the
    batch divides, else the most accumulation below it that divides (1 always does, once `world_size`
    divides the global batch). GlobalBatchCannotBeKept if `world_size` does not."""
    total = saved.global_batch
    for accumulation in range(saved.grad_accum_steps, 0, -1):
        if total % (world_size * accumulation) == 0:
            return Layout(world_size, total // (world_size * accumulation), accumulation)
    working = [str(count) for count in range(1, min(total, 64) + 1) if total % count == 0]
    raise GlobalBatchCannotBeKept(
        f"the checkpoint's global batch of {total} ({processes(saved.world_size)} x {saved.batch_size} x "
        f"{saved.grad_accum_steps} accumulated) does not divide among {world_size} processes; resume on "
        f"{', '.join(working)} processes, or start a new run (another --run-name, or --resume none)."
    )


def fit_config(config: Config, saved: Layout, world_size: int) -> tuple[Config, str]:
    """The config for resuming a checkpoint of layout `saved` on `world_size` processes, and what was chosen
    and why (for the config table)."""
    layout = keep_global_batch(saved, world_size)
    config = dataclasses.replace(config, batch_size=layout.batch_size, grad_accum_steps=layout.grad_accum_steps)
    why = (
        f"resumed on {processes(world_size)} from {saved.world_size}: batch {saved.batch_size} -> "
        f"{layout.batch_size} per process"
    )
    if layout.grad_accum_steps != saved.grad_accum_steps:
        why += f", accumulating {saved.grad_accum_steps} -> {layout.grad_accum_steps}"
    return config, f"{why}, global {saved.global_batch} kept"


def fit_to_checkpoint(config: Config, world_size: int, saved: Layout | None) -> tuple[Config, str | None]:
    """The config to resume on `world_size` processes a checkpoint of layout `saved` (None: no checkpoint
    to resume): unchanged on the same number of processes, else with the per-process batch and accumulation
    that keep its global batch, and why."""
    if saved is None or saved.world_size == world_size:
        return config, None
    return fit_config(config, saved, world_size)


def convert_state(state: TrainingState, saved: Layout, now: Layout, samples: int) -> TrainingState:
    """The checkpoint's state in this run's batches: the optimizer steps of the epoch stay, the batches done
    are counted in this run's (an epoch whose steps are all done stays whole), a change of world size is
    recorded."""
    steps_done = math.ceil(state.batches_done / saved.grad_accum_steps)
    steps_per_epoch = math.ceil(now.batches_per_epoch(samples) / now.grad_accum_steps)
    batches_done = (
        now.batches_per_epoch(samples) if steps_done >= steps_per_epoch else steps_done * now.grad_accum_steps
    )
    changes = state.world_size_changes
    if saved.world_size != now.world_size:
        changes = [*changes, {"step": state.step, "from": saved.world_size, "to": now.world_size}]
    return dataclasses.replace(state, batches_done=batches_done, world_size=now.world_size, world_size_changes=changes)


def merged_sums(rank_files: list[dict], rank: int) -> dict:
    """This rank's epoch sums from the old ranks' files: rank 0 takes them all (the epoch's logged loss and
    accuracy are over every sample it trained), the others start from zero. Rank 0 keeps its interval since
    the last metrics row (train/results.py EpochSums) on top of the others' whole sums."""
    sums = [files["epoch_sums"] for files in rank_files]
    if rank != 0:
        return {name: torch.zeros_like(value) for name, value in sums[0].items()}
    total = {name: sum(each[name] for each in sums) for name in ("loss", "correct", "samples")}
    first = sums[0]
    if "row_loss" in first and "row_samples" in first:
        total["row_loss"] = total["loss"] - (first["loss"] - first["row_loss"])
        total["row_samples"] = total["samples"] - (first["samples"] - first["row_samples"])
    return total
