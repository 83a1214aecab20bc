"""The training loop: epochs of sharded batches, an exact evaluation after each, checkpoints to resume from."""

import json
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from mnist_dist.checkpoint import Checkpointer, TrainingState, save_model
from mnist_dist.config import Config
from mnist_dist.console import TrainingConsole
from mnist_dist.data.augment import augmenter
from mnist_dist.data.datasets import Data
from mnist_dist.data.images import Normalizer
from mnist_dist.data.resident import ResidentLoader, fits_on
from mnist_dist.data.sharding import eval_shard, train_indices, train_loader, train_sampler
from mnist_dist.distributed import configure_ddp
from mnist_dist.errors import Diverged, Preempted
from mnist_dist.evaluation import EvalResult, evaluate
from mnist_dist.models import build_model
from mnist_dist.optim import build_optimizer, build_scheduler
from mnist_dist.signals import StopRequest
from mnist_dist.tracking import Tracker

# Optimizer steps between the ranks' checks for a stop signal and a non-finite loss. Each check
# is one tiny all-reduce and a host sync, so not every step; at ~100 steps/s that is 0.1 s.
# A NaN or inf loss cannot hide until the check: it stays in the epoch's loss sum.
CHECK_EVERY = 10


def accumulation_groups(loader, size: int) -> Iterator[list]:
    """Consecutive batches whose gradients add up to one optimizer step (the last group may be shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Trainer:
    def __init__(self, config: Config, accelerator: Accelerator, data: Data, run_dir: Path | None, facts: dict):
        self.config = config
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process  # this process prints, logs and saves
        self.run_dir = run_dir
        self.facts = facts
        self.device = accelerator.device
        rank, world_size = accelerator.process_index, accelerator.num_processes

        self.train_set = data.train
        use_resident = config.loader == "resident" or (config.loader == "auto" and fits_on(data.train, self.device))
        self.resident = ResidentLoader(data.train, self.device) if use_resident else None
        self.normalize = Normalizer(data.info, self.device)
        self.augment = augmenter(data.info.name) if config.augment else None
        self.sampler = train_sampler(data.train, rank, world_size, config.seed)
        self.eval_shard = eval_shard(data.test, config.eval_batch_size, rank, world_size, config.num_workers)
        self.test_set, self.class_names = data.test, data.info.class_names  # also for the W&B results at the end

        self.batches_per_epoch = math.ceil(len(self.sampler) / config.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.grad_accum_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)

        model = build_model(config.model, data.info).to(self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model = model.to(memory_format=self.memory_format)
        optimizer = build_optimizer(config, model, self.device, accelerator.mixed_precision)
        # Not passed to accelerator.prepare: its wrapper steps a schedule once per process per step.
        self.scheduler = build_scheduler(config, optimizer, self.total_steps, self.steps_per_epoch)
        self.module = model  # the bare model, whose weights are saved and loaded: never "module." keys
        self.model, self.optimizer = accelerator.prepare(model, optimizer)  # DDP-wrapped when distributed
        configure_ddp(self.model)
        # Accelerate's optimizer wrapper is needed for fp16's gradient scaler only. Without one, step
        # the optimizer itself: the wrapper looks packages up on every step and zero_grad inspects
        # signatures (0.4 ms a step here, a quarter of the MLP's step: bench/overhead.py).
        self.step_optimizer = self.optimizer if accelerator.scaler is not None else optimizer
        if config.compile:  # after DDP wrapping, as PyTorch recommends
            self.model = torch.compile(self.model)

        self.state = TrainingState(world_size=world_size)
        self.epoch_sums = self.zero_sums()  # this rank's loss sum, correct count, samples in the epoch
        self.checkpointer = Checkpointer(config, accelerator, run_dir)
        self.reporter = TrainingConsole(self.is_main)
        resume_from = self.checkpointer.find(config.resume) if run_dir is not None else None
        if resume_from is not None:
            self.state, rank_state = self.checkpointer.load(resume_from, self.module, self.optimizer, self.scheduler)
            self.epoch_sums = {key: value.to(self.device) for key, value in rank_state["epoch_sums"].items()}
            self.reporter.print(f"resumed from {resume_from} (step {self.state.step}, epoch {self.state.epoch + 1})")
        self.reporter.show_config(config.to_dict(), facts)
        self.tracker = Tracker(
            config,
            run_dir,
            self.is_main,
            facts,
            self.reporter.print,
            resumed_run_id=self.state.wandb_run_id,
            resumed_step=self.state.step if resume_from is not None else None,
        )

    def zero_sums(self) -> dict[str, torch.Tensor]:
        return {
            "loss": torch.zeros((), device=self.device, dtype=torch.float64),
            "correct": torch.zeros((), device=self.device, dtype=torch.int64),
            "samples": torch.zeros((), device=self.device, dtype=torch.int64),
        }

    def fit(self) -> dict:
        """Train until the configured epochs, max_steps or early stopping; return the summary."""
        started = time.perf_counter()
        evaluation = None
        with StopRequest() as self.stop:
            while not self.finished():
                train = self.train_epoch(self.state.epoch)
                eval_start = time.perf_counter()
                evaluation = self.evaluate()
                train["eval_seconds"] = time.perf_counter() - eval_start
                self.end_epoch(train, evaluation)
        if evaluation is None:  # resumed a run that had already finished
            evaluation = self.evaluate()
        return self.finish(evaluation, time.perf_counter() - started)

    def finished(self) -> bool:
        state, patience = self.state, self.config.early_stopping_patience
        if patience and state.epochs_since_best >= patience:
            self.reporter.print(f"early stopping: no better eval accuracy for {state.epochs_since_best} epochs")
            return True
        return state.epoch >= self.config.epochs or state.step >= self.total_steps

    def train_epoch(self, epoch: int) -> dict:
        """Train the rest of `epoch` (all of it, unless resuming inside it)."""
        self.model.train()
        indices = train_indices(self.sampler, epoch)  # a new shuffle each epoch, the same on every rank
        already = self.state.batches_done * self.config.batch_size  # samples trained before a resume
        if self.resident is not None:
            loader = self.resident.batches(indices[already:], self.config.batch_size)
        else:
            loader = train_loader(self.train_set, self.config.batch_size, indices[already:], self.config.num_workers)
        steps_done = self.state.batches_done // self.config.grad_accum_steps
        steps = min(self.steps_per_epoch, steps_done + self.total_steps - self.state.step)
        self.reporter.start_epoch(epoch, self.config.epochs, steps, completed=steps_done)
        # The epoch's sums stay on the device; they are read (a host sync) only at log intervals.
        logged_loss, interval_samples, interval_start = self.epoch_sums["loss"].item(), 0, time.perf_counter()
        epoch_start = time.perf_counter()
        for step_in_epoch, group in enumerate(
            accumulation_groups(loader, self.config.grad_accum_steps), steps_done + 1
        ):
            interval_samples += self.train_step(group)
            self.state.batches_done += len(group)
            self.reporter.advance()
            if self.state.step % self.config.log_every == 0:
                loss_sum, elapsed = self.epoch_sums["loss"].item(), time.perf_counter() - interval_start
                self.log_step(
                    epoch, step_in_epoch, (loss_sum - logged_loss) / interval_samples, interval_samples / elapsed
                )
                logged_loss, interval_samples, interval_start = loss_sum, 0, time.perf_counter()
            due = self.checkpointer.due_at_step(self.state.step)
            if self.state.step % CHECK_EVERY == 0 or due:
                self.check_health()
            last = step_in_epoch == steps
            if due and not (last and self.checkpointer.due_at_epoch_end()):  # end_epoch saves the last, with the eval
                self.save_checkpoint()
            if last:
                break
        seconds = time.perf_counter() - epoch_start
        self.check_health()
        # Sum over ranks so that the epoch's train loss and accuracy cover every rank's samples.
        totals = torch.stack([value.double() for value in self.epoch_sums.values()])
        loss_total, correct_total, samples_total = self.accelerator.reduce(totals, reduction="sum").tolist()
        return {
            "loss": loss_total / samples_total,
            "accuracy": correct_total / samples_total,
            "seconds": seconds,
            "samples": int(samples_total),
        }

    def train_step(self, group: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Forward and backward each batch of the group, then one optimizer step.

        Adds the group's loss and correct count to the epoch's sums; returns its sample count.
        """
        sums, samples = self.epoch_sums, 0
        for index, (images, labels) in enumerate(group):
            images = images.to(self.device, non_blocking=True)
            if self.augment is not None:
                images = self.augment(images)
            images = self.normalize(images).contiguous(memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            # Gradients are all-reduced only on the group's last backward.
            sync = index == len(group) - 1
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                logits = self.model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
                self.accelerator.backward(loss / len(group))
            sums["loss"] += loss.detach() * len(labels)
            sums["correct"] += (logits.detach().argmax(dim=1) == labels).sum()
            samples += len(labels)
        sums["samples"] += samples
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.step_optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 skips steps whose gradients overflowed
            self.scheduler.step()
        self.step_optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return samples

    def check_health(self) -> None:
        """All ranks agree: stop on a NaN/inf loss (no checkpoint), or checkpoint and stop on a signal."""
        nonfinite = ~torch.isfinite(self.epoch_sums["loss"])  # NaN and inf stay in a sum of non-negative losses
        flags = torch.stack(
            [
                nonfinite.double(),
                torch.tensor(float(self.stop.signal_name is not None), device=self.device, dtype=torch.float64),
            ]
        )
        nonfinite, stop = (value > 0 for value in self.accelerator.reduce(flags, reduction="sum").tolist())
        if nonfinite:
            last = self.checkpointer.complete_checkpoints()
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
            raise Diverged(
                f"the training loss became NaN or infinite by step {self.state.step}; {kept}. "
                "Lower --lr, or set --max-grad-norm."
            )
        if stop:
            where = self.save_checkpoint() if self.checkpointer.folder is not None else None
            signal_name = self.stop.signal_name or "a stop signal (on another rank)"
            saved = (
                f"checkpoint {where} written; run the same command again to resume"
                if where
                else "no run dir to save to"
            )
            raise Preempted(f"stopped by {signal_name} after step {self.state.step}: {saved}.")

    def save_checkpoint(self) -> Path:
        # Ranks hold identical weights, so each reaches the same verdict without a collective.
        if not torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all():  # one host sync
            raise Diverged(
                f"the weights became NaN or infinite by step {self.state.step}; "
                "no checkpoint was written for it. Lower --lr, or set --max-grad-norm."
            )
        rank_state = {"epoch_sums": {key: value.cpu() for key, value in self.epoch_sums.items()}}
        self.state.wandb_run_id = self.tracker.run_id
        return self.checkpointer.save(self.state, self.module, self.optimizer, self.scheduler, rank_state)

    def evaluate(self) -> EvalResult:
        # The bare module, not DDP's wrapper, whose forward may join collectives that a rank without
        # evaluation batches would never reach. Each rank kept its own BatchNorm statistics while
        # training; all take rank 0's (the ones the saved model holds), so all evaluate one model.
        if self.accelerator.num_processes > 1:
            for buffer in self.module.buffers():
                torch.distributed.broadcast(buffer, src=0)
        result = evaluate(self.module, self.eval_shard, self.normalize, self.accelerator)
        if result.count != len(self.test_set):  # the sharding's promise, checked every time
            raise RuntimeError(f"evaluated {result.count} samples, the test set has {len(self.test_set)}")
        return result

    def end_epoch(self, train: dict, evaluation: EvalResult) -> None:
        state = self.state
        row = {
            "epoch": state.epoch + 1,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "eval_loss": evaluation.loss,
            "eval_accuracy": evaluation.accuracy,
            "train_samples": train["samples"],
            "eval_samples": evaluation.count,
            "epoch_seconds": train["seconds"],  # training only; evaluation is eval_seconds
            "eval_seconds": train["eval_seconds"],
            "samples_per_second": train["samples"] / train["seconds"],
        }
        self.reporter.end_epoch(row)
        self.tracker.log("epoch", state.step, row)
        if evaluation.accuracy > state.best_accuracy:
            state.best_accuracy, state.best_step, state.epochs_since_best = evaluation.accuracy, state.step, 0
        else:
            state.epochs_since_best += 1
        if state.batches_done >= self.batches_per_epoch:  # not when --max-steps stopped inside the epoch
            state.epoch, state.batches_done = state.epoch + 1, 0
            self.epoch_sums = self.zero_sums()
        if self.checkpointer.due_at_epoch_end():
            self.save_checkpoint()

    def log_step(self, epoch: int, step_in_epoch: int, loss: float, local_samples_per_second: float) -> None:
        lr = self.scheduler.get_last_lr()[0]
        samples_per_second = local_samples_per_second * self.accelerator.num_processes
        self.reporter.log_step(step_in_epoch, loss, lr, samples_per_second)
        self.tracker.log(
            "step",
            self.state.step,
            {"epoch": epoch + 1, "loss": loss, "lr": lr, "samples_per_second": samples_per_second},
        )

    def finish(self, evaluation: EvalResult, seconds: float) -> dict:
        """Save the final model, print the summary, write summary.json."""
        self.accelerator.wait_for_everyone()
        if self.is_main and self.run_dir is not None:
            save_model(self.module, self.config, self.run_dir / "model.safetensors")
        self.accelerator.wait_for_everyone()
        state = self.state
        results = {
            "final_eval_accuracy": evaluation.accuracy,
            "final_eval_loss": evaluation.loss,
            "best_eval_accuracy": state.best_accuracy,
            "epochs": state.epoch,
            "steps": state.step,
            "seconds": seconds,
            **self.facts,
        }
        self.reporter.summary(
            {
                "final eval accuracy": f"{evaluation.accuracy:.2%}",
                "best eval accuracy": f"{state.best_accuracy:.2%}",
                "final eval loss": f"{evaluation.loss:.4f}",
                "epochs": state.epoch,
                "optimizer steps": state.step,
                "seconds": seconds,
                "run dir": str(self.run_dir) if self.run_dir else "(dry run: nothing written)",
            }
        )
        self.tracker.summarize(results)
        if self.is_main and self.run_dir is not None:
            (self.run_dir / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
        self.tracker.log_results(self.module, self.test_set, self.normalize, self.class_names, state.step)
        return results

    def close(self) -> None:
        self.tracker.close()
