"""The training loop: epochs of sharded batches, an exact validation after each (or every --val-every),
checkpoints to resume from.

    fit()          until the epochs, --max-steps or early stopping: train_epoch, then end_epoch
    train_epoch()  the optimizer steps of one epoch's plan: progress, the ranks' agreement, checkpoints when due
    train_step()   forward and backward of a group of batches, then one optimizer step
    end_epoch()    evaluate (each --val-every epochs), log the epoch's row, choose the model, checkpoint when due

train/build.py makes the trainer's parts (resumed from a checkpoint where there is one); train/final.py
tests the kept weights and writes the run's files once fit() returns. Every rank runs the same loop on
its own shard; the main process prints, logs and saves.
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.optim.lr_scheduler import LRScheduler

from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.checkpoint.writer import CheckpointWriter
from mnist_dist.config import Config
from mnist_dist.data.images import DatasetInfo, Normalizer
from mnist_dist.data.loaders import TrainBatches, accumulation_groups
from mnist_dist.evaluate.exact import EvalResult, EvalSplits
from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.train.agreement import Agreement
from mnist_dist.train.flops import Utilization
from mnist_dist.train.plan import EpochPlan, RunLength, finished
from mnist_dist.train.progress import ProgressReport
from mnist_dist.train.results import EpochSums, epoch_row
from mnist_dist.train.selection import ModelSelection
from mnist_dist.train.signals import StopRequest
from mnist_dist.train.stragglers import StepTimer
from mnist_dist.train.time_split import TimeSplit


@dataclass(eq=False)
class Trainer:
    """Its parts arrive ready-made (train/build.py), grouped by role."""

    # The job
    config: Config
    accelerator: Accelerator
    facts: dict  # device, world size, precision, versions, git commit: for the console and summary
    # The data
    info: DatasetInfo
    loader: TrainBatches  # this rank's training batches, shuffled anew each epoch
    normalize: Normalizer  # uint8 images -> normalized floats, on the device
    splits: EvalSplits  # validation after each epoch (or every --val-every), test at the end
    length: RunLength  # steps per epoch and in all
    # The model
    module: torch.nn.Module  # the bare model, whose weights are saved and loaded: never "module." keys
    model: torch.nn.Module | None  # what trains: DDP-wrapped when distributed, compiled with --compile
    step_optimizer: torch.optim.Optimizer  # Accelerate's wrapper only where fp16's gradient scaler needs it
    scheduler: LRScheduler  # not passed to accelerator.prepare: its wrapper steps once per process per step
    memory_format: torch.memory_format  # channels_last with --channels-last
    # Where training stands
    state: TrainingState
    sums: EpochSums  # this rank's loss sum, correct count and samples in the epoch
    selection: ModelSelection  # the best weights so far, and early stopping
    already_finished: bool  # a finished run run again: nothing is trained, logged or written
    # What watches, records and stops it
    console: TrainingConsole
    tracker: Tracker  # metrics.jsonl and W&B (main process)
    progress: ProgressReport
    stop: StopRequest  # --stop-signals (SIGTERM/SIGUSR1/Ctrl-C by default) -> checkpoint and exit, in fit()
    agreement: Agreement  # the ranks agree on a stop signal, a non-finite loss, a failed write
    checkpoints: CheckpointWriter
    # This rank's data wait, forward and step times, which the agreement gathers (train/stragglers.py).
    # The launch check (check/equivalence.py) takes steps without one: a CPU timer nobody reads.
    timer: StepTimer = field(default_factory=StepTimer)
    # The model's FLOPs per sample and the device's peak, for each epoch's and the run's MFU (train/flops.py).
    utilization: Utilization = field(default_factory=Utilization.unknown)
    # Where this job's time went, for summary.json (train/time_split.py).
    time_split: TimeSplit = field(default_factory=TimeSplit)

    def finished(self) -> bool:
        """The epochs or --max-steps reached, or early stopping."""
        return finished(self.length, self.state, self.selection)

    def fit(self) -> EvalResult:
        """Train until the configured epochs, max_steps or early stopping; return the last evaluation."""
        evaluation = None
        with self.stop:
            while not self.finished():
                ended = self.end_epoch(self.train_epoch(self.length.plan_epoch(self.state)))
                evaluation = evaluation if ended is None else ended  # None: an epoch not evaluated (--val-every)
            if self.state.step > self.state.evaluated_step:
                # Stopped after its last step but before that epoch's evaluation (a stop signal in its last
                # steps): end the epoch now, as the uninterrupted run did: evaluated, logged, chosen.
                over_ranks = self.sums.over_ranks(self.accelerator)
                evaluation = self.end_epoch({**over_ranks, "seconds": 0.0, "samples_per_second": 0.0})
        if self.selection.stopped_early() and not self.length.reached(self.state):
            since = self.state.epochs_since_best
            epochs = "1 epoch" if since == 1 else f"{since} epochs"
            self.console.print(f"early stopping: no better validation accuracy for {epochs}")
        if evaluation is None:  # resumed a run that had trained all its steps, or whose last epoch was not evaluated
            evaluation = self.splits.evaluate(self.module)
        return evaluation

    def train_epoch(self, plan: EpochPlan) -> dict:
        """Train the steps of `plan`; return the epoch's loss, accuracy and samples over all ranks, and its seconds."""
        self.model.train()
        self.loader.set_epoch(plan.epoch, plan.skip_batches)  # a new shuffle each epoch, the same on every rank
        self.progress.start_epoch(plan.epoch, self.config.epochs, plan.first_step, plan.last_step, self.sums)
        started = time.perf_counter()
        batches = self.timer.batches(self.loader)  # the wait for each batch timed
        groups, trained = accumulation_groups(batches, self.config.grad_accum_steps), 0
        for step_in_epoch, group in zip(range(plan.first_step, plan.last_step + 1), groups):
            samples = self.train_step(group)
            self.timer.end_step()
            trained += samples
            self.state.batches_done += len(group)
            step, lr = self.state.step, self.scheduler.get_last_lr()[0]
            self.progress.after_step(step, step_in_epoch, samples, self.sums, lr)
            self.agreement.check(step)  # every CHECK_EVERY steps
            self.checkpoints.save_if_due(step, last_of_epoch=step_in_epoch == plan.last_step)
        seconds = time.perf_counter() - started
        # The speed counts what this job trained: a resumed epoch's sums also hold the samples before it.
        trained *= self.accelerator.num_processes
        self.time_split.add_epoch(trained, seconds)
        self.agreement.check(self.state.step, force=True)
        speed = trained / seconds if seconds else 0.0
        return {**self.sums.over_ranks(self.accelerator), "seconds": seconds, "samples_per_second": speed}

    def train_step(self, group: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Forward and backward each batch of the group, then one optimizer step.

        Adds the group's loss and correct count to the epoch's sums; returns its sample count.
        """
        sums, samples = self.sums, 0
        for index, (images, labels) in enumerate(group):  # uint8 (B, C, H, W), int64 (B,), on the device
            images = self.normalize(images).contiguous(memory_format=self.memory_format)
            # Gradients are all-reduced only on the group's last backward.
            sync = index == len(group) - 1
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                with self.timer.forward:  # this rank's own work, before the collective where all ranks wait
                    logits = self.model(images)
                    loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
                self.accelerator.backward(loss / len(group))
            sums.loss += loss.detach() * len(labels)
            sums.correct += (logits.detach().argmax(dim=1) == labels).sum()
            samples += len(labels)
        sums.samples += samples
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.step_optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 skips steps whose gradients overflowed
            self.scheduler.step()
        self.step_optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return samples

    def end_epoch(self, train: dict) -> EvalResult | None:
        """Evaluate when due (--val-every); log the epoch's row (`train`: its loss, accuracy, samples, seconds and
        speed), choose the model, go on to the next epoch (unless --max-steps stopped inside this one), checkpoint
        when due. Returns the evaluation, None for an epoch not evaluated."""
        state, evaluation = self.state, None
        if self.length.evaluates(state):
            started = time.perf_counter()
            evaluation = self.splits.evaluate(self.module)
            train["eval_seconds"] = time.perf_counter() - started
            self.time_split.validation += train["eval_seconds"]
        state.evaluated_step = state.step
        row = epoch_row(state.epoch, train, evaluation, self.splits.epoch_name)
        row |= self.utilization.rates(train["samples_per_second"])  # achieved FLOP/s, MFU
        self.console.end_epoch(row, self.splits.epoch_name)
        self.tracker.log("epoch", state.step, row)
        if evaluation is not None:
            self.selection.after_evaluation(evaluation.accuracy, self.module)
        if state.batches_done >= self.loader.batches_per_epoch:  # not when --max-steps stopped inside the epoch
            state.epoch, state.batches_done = state.epoch + 1, 0
            self.sums.reset()
        # The ranks' agreement before the save also makes sure the epoch's row reached metrics.jsonl.
        self.checkpoints.save_if_due(state.step, epoch_end=True)
        return evaluation

    def close(self) -> None:
        self.tracker.close()
        self.model = None  # the DDP wrapper, which holds the process group: see job.leave_group
