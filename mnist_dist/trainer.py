"""The training loop: epochs of sharded batches, an exact evaluation after each, metrics to the console and files."""

import json
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from mnist_dist import checkpoint
from mnist_dist.config import Config
from mnist_dist.console import Reporter
from mnist_dist.data.datasets import Data
from mnist_dist.data.images import Normalizer
from mnist_dist.data.sharding import eval_shard, train_loader, train_sampler
from mnist_dist.evaluation import EvalResult, evaluate
from mnist_dist.models import build_model
from mnist_dist.optim import build_optimizer, build_scheduler
from mnist_dist.tracking import Tracker


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

        self.normalize = Normalizer(data.info, self.device)
        self.sampler = train_sampler(data.train, rank, world_size, config.seed)
        self.train_loader = train_loader(data.train, config.batch_size, self.sampler, config.num_workers)
        self.eval_shard = eval_shard(data.test, config.eval_batch_size, rank, world_size, config.num_workers)
        self.test_size = len(data.test)

        self.steps_per_epoch = math.ceil(len(self.train_loader) / config.grad_accum_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)

        model = build_model(config.model, data.info)
        optimizer = build_optimizer(config, model)
        # Not passed to accelerator.prepare: its wrapper steps a schedule once per process per step.
        self.scheduler = build_scheduler(config, optimizer, self.total_steps, self.steps_per_epoch)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.step = 0  # optimizer steps taken, the x axis of every metric

        self.reporter = Reporter(self.is_main, config.log_every)
        self.reporter.show_config(config.to_dict(), facts)
        self.tracker = Tracker(config, run_dir, self.is_main, facts, self.reporter.print)

    def fit(self) -> dict:
        """Train for the configured epochs (or until max_steps or early stopping); return the summary."""
        best_accuracy, epochs_since_best = -1.0, 0
        started = time.perf_counter()
        samples_trained = 0
        for epoch in range(self.config.epochs):
            train = self.train_epoch(epoch)
            evaluation = self.evaluate()
            samples_trained += train["samples"]
            self.record_epoch(epoch, train, evaluation)
            if evaluation.accuracy > best_accuracy:
                best_accuracy, epochs_since_best = evaluation.accuracy, 0
            else:
                epochs_since_best += 1
            if self.step >= self.total_steps:
                break
            if self.config.early_stopping_patience and epochs_since_best >= self.config.early_stopping_patience:
                self.reporter.print(f"early stopping: no better eval accuracy for {epochs_since_best} epochs")
                break
        seconds = time.perf_counter() - started
        self.save_model()
        summary = {
            "final eval accuracy": f"{evaluation.accuracy:.2%}",
            "best eval accuracy": f"{best_accuracy:.2%}",
            "final eval loss": f"{evaluation.loss:.4f}",
            "epochs": epoch + 1,
            "optimizer steps": self.step,
            "seconds": seconds,
            "samples/s (train + eval)": samples_trained / seconds,
            "run dir": str(self.run_dir) if self.run_dir else "(dry run: nothing written)",
        }
        self.reporter.summary(summary)
        results = {
            "final_eval_accuracy": evaluation.accuracy,
            "final_eval_loss": evaluation.loss,
            "best_eval_accuracy": best_accuracy,
            "epochs": epoch + 1,
            "steps": self.step,
            "seconds": seconds,
            **self.facts,
        }
        self.tracker.summarize(results)
        if self.is_main and self.run_dir is not None:
            (self.run_dir / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
        return results

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        self.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        steps = min(self.steps_per_epoch, self.total_steps - self.step)
        self.reporter.start_epoch(epoch, self.config.epochs, steps)
        # Running sums stay on the device; they are read (a host sync) only at log intervals.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        samples = 0
        interval_loss, interval_samples, interval_start = torch.zeros((), device=self.device), 0, time.perf_counter()
        epoch_start = time.perf_counter()
        for step_in_epoch, group in enumerate(accumulation_groups(self.train_loader, self.config.grad_accum_steps), 1):
            batch_loss_sum, batch_correct, batch_samples = self.train_step(group)
            loss_sum += batch_loss_sum
            correct += batch_correct
            samples += batch_samples
            interval_loss += batch_loss_sum
            interval_samples += batch_samples
            self.reporter.advance()
            if self.step % self.config.log_every == 0:
                elapsed = time.perf_counter() - interval_start
                self.log_step(epoch, step_in_epoch, interval_loss.item() / interval_samples, interval_samples / elapsed)
                interval_loss.zero_()
                interval_samples, interval_start = 0, time.perf_counter()
            if step_in_epoch == steps:
                break
        seconds = time.perf_counter() - epoch_start
        # Sum over ranks so that the epoch's train loss and accuracy cover every rank's samples.
        totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(samples, dtype=torch.float64, device=self.device)])
        loss_total, correct_total, samples_total = self.accelerator.reduce(totals, reduction="sum").tolist()
        return {
            "loss": loss_total / samples_total,
            "accuracy": correct_total / samples_total,
            "seconds": seconds,
            "samples": int(samples_total),
        }

    def train_step(self, group: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward and backward each batch of the group, then one optimizer step.

        Returns the group's summed loss and correct count (device tensors) and its sample count.
        """
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        samples = 0
        for index, (images, labels) in enumerate(group):
            images = self.normalize(images.to(self.device, non_blocking=True))
            labels = labels.to(self.device, non_blocking=True)
            # Gradients are all-reduced only on the group's last backward.
            sync = index == len(group) - 1
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                logits = self.model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
                self.accelerator.backward(loss / len(group))
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            samples += len(labels)
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 skips steps whose gradients overflowed
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_sum, correct, samples

    def evaluate(self) -> EvalResult:
        result = evaluate(self.model, self.eval_shard, self.normalize, self.accelerator)
        if result.count != self.test_size:  # the sharding's promise, checked every time
            raise RuntimeError(f"evaluated {result.count} samples, the test set has {self.test_size}")
        return result

    def log_step(self, epoch: int, step_in_epoch: int, loss: float, local_samples_per_second: float) -> None:
        lr = self.scheduler.get_last_lr()[0]
        samples_per_second = local_samples_per_second * self.accelerator.num_processes
        self.reporter.log_step(step_in_epoch, loss, lr, samples_per_second)
        self.tracker.log("step", self.step, {"epoch": epoch + 1, "loss": loss, "lr": lr, "samples_per_second": samples_per_second})

    def record_epoch(self, epoch: int, train: dict, evaluation: EvalResult) -> None:
        row = {
            "epoch": epoch + 1,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "eval_loss": evaluation.loss,
            "eval_accuracy": evaluation.accuracy,
            "eval_samples": evaluation.count,
            "epoch_seconds": train["seconds"],
            "samples_per_second": train["samples"] / train["seconds"],
        }
        self.reporter.end_epoch(row)
        self.tracker.log("epoch", self.step, row)

    def save_model(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main and self.run_dir is not None:
            model = self.accelerator.unwrap_model(self.model)
            checkpoint.save_model(model, self.config, self.run_dir / "model.safetensors")
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        self.tracker.close()
