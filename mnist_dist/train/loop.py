"""The training loop: epochs of sharded batches, an exact validation after each, checkpoints to resume from.

    fit()          until the epochs, --max-steps or early stopping: train_epoch, evaluate, end_epoch
    train_epoch()  the optimizer steps of one epoch's plan: log, check health, checkpoint when due
    train_step()   forward and backward of a group of batches, then one optimizer step
    finish()       the kept weights tested once; model.safetensors, last.safetensors, summary.json, W&B

Every rank runs the same loop on its own shard; the main process (`is_main`) prints, logs and saves.
"""

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_dist.checkpoint.weights import cpu_weights
from mnist_dist.checkpoint.writer import Checkpointer, TrainingState, save_final
from mnist_dist.config import Config, stop_signal_names
from mnist_dist.data.datasets import Data
from mnist_dist.data.images import DatasetInfo, Normalizer
from mnist_dist.data.loaders import accumulation_groups, build_train_loader
from mnist_dist.distributed import fail_together, wrap_for_training
from mnist_dist.errors import Diverged, Preempted
from mnist_dist.evaluate.exact import EvalResult, EvalSplits
from mnist_dist.models import build_model
from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.train.optim import build_optimizer, build_scheduler
from mnist_dist.train.progress import ProgressReport
from mnist_dist.train.results import EpochSums, epoch_row, final_results
from mnist_dist.train.selection import ModelSelection
from mnist_dist.train.signals import StopRequest

# Optimizer steps between the ranks' checks for a stop signal and a non-finite loss. Each check
# is one tiny all-reduce and a host sync, so not every step; at ~100 steps/s that is 0.1 s.
# A NaN or inf loss cannot hide until the check: it stays in the epoch's loss sum.
CHECK_EVERY = 10


@dataclass(frozen=True)
class EpochPlan:
    """What one call of train_epoch trains, computed once at its start. Steps count within the epoch, from 1."""

    epoch: int
    skip_batches: int  # batches of this epoch trained before a resume, on each rank
    first_step: int  # the first optimizer step still to take
    last_step: int  # the last step to take: the epoch's end, or earlier where --max-steps falls inside it


class Trainer:
    def __init__(self, config: Config, accelerator: Accelerator, data: Data, facts: dict, sources: dict):
        self.config = config
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process  # this process prints, logs and saves
        self.facts = facts  # device, world size, precision, versions, git commit: for the console and summary
        self.device = accelerator.device
        self.set_up_data(data)
        self.build_model_and_optimizer(data.info)
        self.state = TrainingState(world_size=accelerator.num_processes)
        self.sums = EpochSums(self.device)  # this rank's loss sum, correct count and samples in the epoch
        # --stop-signals (SIGTERM/SIGUSR1/Ctrl-C by default) -> checkpoint and exit, while fit() runs
        self.stop = StopRequest(stop_signal_names(config.stop_signals))
        self.console = TrainingConsole(self.is_main)
        self.checkpointer = Checkpointer(
            config, accelerator, config.run_path if config.writes_files else None, data.info
        )
        resumed = self.resume()
        # A finished run that is run again only says so: nothing is trained, logged or written.
        self.already_finished = bool(resumed) and self.finished() and (config.run_path / "summary.json").is_file()
        if resumed and not self.already_finished:
            self.console.print(f"resumed from {resumed} (step {self.state.step}, epoch {self.state.epoch + 1})")
        if not self.already_finished:
            self.console.show_config(config, facts, sources, self.splits.describe())
        self.tracker = self.start_tracker()
        self.progress = ProgressReport(self.console, self.tracker, config.log_every, accelerator.num_processes)
        contents = (self.module, self.optimizer, self.scheduler, self.state, lambda: self.sums.saved())
        self.checkpointer.attach(*contents, lambda: self.selection.best_weights)

    def set_up_data(self, data: Data) -> None:
        """This rank's training loader and evaluation batches, and how many steps the run takes."""
        config, rank, world_size = self.config, self.accelerator.process_index, self.accelerator.num_processes
        self.loader = build_train_loader(config, data.train, self.device, rank, world_size)
        self.normalize = Normalizer(data.info, self.device)
        self.info = data.info
        self.splits = EvalSplits(data, config, self.normalize, self.accelerator)  # val each epoch, test at the end
        self.steps_per_epoch = math.ceil(self.loader.batches_per_epoch / config.grad_accum_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)

    def build_model_and_optimizer(self, info: DatasetInfo) -> None:
        config = self.config
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model = build_model(config.model, info, config.eval_flip).to(self.device, memory_format=self.memory_format)
        optimizer = build_optimizer(config, model, self.device, self.accelerator.mixed_precision)
        # Not passed to accelerator.prepare: its wrapper steps a schedule once per process per step.
        self.scheduler = build_scheduler(config, optimizer, self.total_steps, self.steps_per_epoch)
        self.module = model  # the bare model, whose weights are saved and loaded: never "module." keys
        self.model, self.optimizer, self.step_optimizer = wrap_for_training(model, optimizer, config, self.accelerator)

    def resume(self) -> Path | None:
        """Continue from the checkpoint that --resume names (auto: the run's newest loadable one), if any."""
        loaded = self.checkpointer.resume(self.module, self.optimizer, self.scheduler, self.console.print)
        if loaded is not None:
            self.state, self.sums = loaded.state, EpochSums(self.device, loaded.rank_state)
        best = loaded.best if loaded is not None else None  # the best weights so far, with their step in state
        self.selection = ModelSelection(self.state, self.config.early_stopping_patience, self.splits.held_out, best)
        return loaded.path if loaded is not None else None

    def start_tracker(self) -> Tracker:
        """metrics.jsonl and W&B (main process). A resumed run continues the checkpoint's W&B run."""
        config, logs = self.config, self.is_main and not self.already_finished
        files = config.run_path if config.writes_files else None
        tracker = Tracker(config, files, logs, self.facts, self.console.print, self.state.wandb_run_id, self.state.step)
        self.state.wandb_run_id = tracker.run_id  # checkpoints carry it, so a later resume continues it too
        fail_together(self.accelerator, tracker.failure)  # metrics.jsonl could not be trimmed (main process)
        return tracker

    def fit(self) -> dict:
        """Train until the configured epochs, max_steps or early stopping; return the summary."""
        started = time.perf_counter()
        evaluation = None
        with self.stop:
            while not self.finished():
                train = self.train_epoch(self.plan_epoch())
                eval_start = time.perf_counter()
                evaluation = self.splits.evaluate(self.module)
                train["eval_seconds"] = time.perf_counter() - eval_start
                self.end_epoch(train, evaluation)
            if self.state.step > self.state.evaluated_step:  # resumed after the last step, before its epoch's end
                evaluation = self.end_pending_epoch()
        if (
            self.selection.stopped_early()
            and self.state.epoch < self.config.epochs
            and self.state.step < self.total_steps
        ):
            since = self.state.epochs_since_best
            self.console.print(f"early stopping: no better validation accuracy for {since} epochs")
        if evaluation is None:  # resumed a run that had trained all its steps
            evaluation = self.splits.evaluate(self.module)
        return self.finish(evaluation, time.perf_counter() - started)

    def finished(self) -> bool:
        """The epochs or --max-steps reached, or early stopping."""
        return (
            self.selection.stopped_early()
            or self.state.epoch >= self.config.epochs
            or self.state.step >= self.total_steps
        )

    def plan_epoch(self) -> EpochPlan:
        """The rest of the current epoch: all of it, unless resuming inside it or --max-steps ends it early."""
        state = self.state
        done = state.batches_done // self.config.grad_accum_steps  # its optimizer steps taken before a resume
        last = min(self.steps_per_epoch, done + self.total_steps - state.step)
        return EpochPlan(epoch=state.epoch, skip_batches=state.batches_done, first_step=done + 1, last_step=last)

    def train_epoch(self, plan: EpochPlan) -> dict:
        """Train the steps of `plan`; return the epoch's loss, accuracy and samples over all ranks, and its seconds."""
        self.model.train()
        self.loader.set_epoch(plan.epoch, plan.skip_batches)  # a new shuffle each epoch, the same on every rank
        self.progress.start_epoch(plan.epoch, self.config.epochs, plan.first_step, plan.last_step, self.sums.loss)
        started = time.perf_counter()
        groups, trained = accumulation_groups(self.loader, self.config.grad_accum_steps), 0
        for step_in_epoch, group in zip(range(plan.first_step, plan.last_step + 1), groups):
            samples = self.train_step(group)
            trained += samples
            self.state.batches_done += len(group)
            self.after_step(plan, step_in_epoch, samples)
        seconds = time.perf_counter() - started
        self.check_health(force=True)
        # The speed counts what this job trained: a resumed epoch's sums also hold the samples before it.
        speed = trained * self.accelerator.num_processes / seconds if seconds else 0.0
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

    def after_step(self, plan: EpochPlan, step_in_epoch: int, samples: int) -> None:
        """Progress, step metrics, the health check, and a checkpoint when one is due."""
        step = self.state.step
        self.progress.after_step(step, step_in_epoch, samples, self.sums.loss, self.scheduler.get_last_lr()[0])
        save_now = self.checkpointer.due(step, last_of_epoch=step_in_epoch == plan.last_step)
        self.check_health(force=save_now)  # never checkpoint a diverged run
        if save_now:
            self.checkpointer.save_now()

    def check_health(self, force: bool = False) -> None:
        """Every CHECK_EVERY steps, or when forced, all ranks agree: stop on a failed write of metrics.jsonl
        or a NaN/inf loss (no checkpoint), or checkpoint and stop when a stop signal reached any rank."""
        if not force and self.state.step % CHECK_EVERY:
            return
        nonfinite = ~torch.isfinite(self.sums.loss)  # NaN and inf stay in a sum of non-negative losses
        local = [self.tracker.failure is not None, self.stop.signal_name is not None]
        flags = torch.cat([nonfinite.double().view(1), torch.tensor(local, device=self.device, dtype=torch.float64)])
        nonfinite, write_failed, stop = (value > 0 for value in self.accelerator.reduce(flags, "sum").tolist())
        if write_failed:  # before a checkpoint: one holding a step whose row was lost would resume without it
            fail_together(self.accelerator, self.tracker.failure)
        if nonfinite:
            kept = self.checkpointer.what_is_kept("the last good checkpoint is {}")
            raise Diverged(
                f"the training loss became NaN or infinite by step {self.state.step}; {kept}. "
                "Lower --lr, or set --max-grad-norm."
            )
        if stop:
            where = self.checkpointer.save_now() if self.checkpointer.enabled else None
            signal_name = self.stop.signal_name or "a stop signal (on another rank)"
            saved = (
                f"checkpoint {where} written; run the same command again to resume"
                if where
                else "no run dir to save to"
            )
            raise Preempted(f"stopped by {signal_name} after step {self.state.step}: {saved}.")

    def end_pending_epoch(self) -> EvalResult:
        """A run stopped after its last step but before that epoch's evaluation (a stop signal in its
        last steps) ends the epoch on resume, as the uninterrupted run did: evaluated, logged, chosen."""
        started, train = time.perf_counter(), {**self.sums.over_ranks(self.accelerator), "seconds": 0.0}
        evaluation = self.splits.evaluate(self.module)
        self.end_epoch({**train, "samples_per_second": 0.0, "eval_seconds": time.perf_counter() - started}, evaluation)
        return evaluation

    def end_epoch(self, train: dict, evaluation: EvalResult) -> None:
        state = self.state
        state.evaluated_step = state.step
        row = epoch_row(state.epoch, train, evaluation, self.splits.epoch_name)
        self.console.end_epoch(row, self.splits.epoch_name)
        self.tracker.log("epoch", state.step, row)
        self.selection.after_evaluation(evaluation.accuracy, self.module)
        if state.batches_done >= self.loader.batches_per_epoch:  # not when --max-steps stopped inside the epoch
            state.epoch, state.batches_done = state.epoch + 1, 0
            self.sums = EpochSums(self.device)
        if self.checkpointer.due(state.step, epoch_end=True):
            self.check_health(force=True)  # the epoch's row reached metrics.jsonl before a checkpoint holds it
            self.checkpointer.save_now()

    def finish(self, evaluation: EvalResult, seconds: float) -> dict:
        """Test the kept weights; write them, the last (`evaluation`'s) and summary.json; print and send the results."""
        fail_together(self.accelerator, self.tracker.failure)  # a row lost since the last health check
        last = cpu_weights(self.module)
        self.kept_step = self.selection.keep(self.module)
        test = self.splits.evaluate(self.module, test=True) if self.splits.held_out else evaluation
        results = final_results(self.state, evaluation, test, self.kept_step, seconds, self.facts)
        save_final(self.accelerator, self.config, self.info, results, kept=self.module.state_dict(), last=last)
        self.console.summary(results, self.config.run_dir if self.config.writes_files else None)
        self.tracker.summarize(results)
        self.log_predictions()
        return results

    def log_predictions(self) -> None:
        """W&B's confusion matrix and predictions table: one pass over the test set on every rank, if W&B is on."""
        if self.config.wandb == "disabled":  # every rank knows: no collective for nothing at the very end
            return
        wanted = [self.tracker.wants_predictions]
        broadcast_object_list(wanted)  # only the main process knows; a no-op in a single process
        if not wanted[0]:
            return
        predictions = self.splits.predict_test(self.module)
        if self.is_main:
            images, names = self.splits.test_set.images, self.info.class_names
            self.tracker.log_results(predictions, images, names, self.state.step, self.kept_step)

    def close(self) -> None:
        self.tracker.close()
        self.model = None  # the DDP wrapper, which holds the process group: see run.leave_group
