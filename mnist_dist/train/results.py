"""The numbers a run reports: a row per epoch (metrics.jsonl, W&B, the console's epoch table) and
the final results (summary.json, W&B's summary, the console's closing table)."""

import torch
from accelerate import Accelerator

from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.evaluate.exact import EvalResult


class EpochSums:
    """This rank's running sums over the epoch, kept on the device so that adding costs no host sync.

    A NaN or inf loss stays in `loss` (a sum of non-negative losses), which the ranks' agreement reads.
    `row_loss` and `row_samples` are `loss` and `samples` at the epoch's last metrics row, so that the
    next row averages from there. A checkpoint saves them all (`saved`): a run resumed inside an epoch
    reports the whole epoch, and its first row what the uninterrupted run logged.
    """

    NAMES = ("loss", "correct", "samples", "row_loss", "row_samples")

    def __init__(self, device: torch.device, saved: dict | None = None):
        sums = saved["epoch_sums"] if saved else {}
        for name in self.NAMES:
            dtype = torch.float64 if name.endswith("loss") else torch.int64
            setattr(self, name, sums.get(name, torch.zeros((), dtype=dtype)).to(device))

    def reset(self) -> None:
        """Zero for a new epoch, in place: the agreement and the checkpoints hold this object."""
        for name in self.NAMES:
            setattr(self, name, torch.zeros_like(getattr(self, name)))

    def mark_row(self) -> None:
        """A metrics row was logged now: the next one averages from here (no host sync)."""
        self.row_loss, self.row_samples = self.loss.clone(), self.samples.clone()

    def saved(self) -> dict:
        return {"epoch_sums": {name: getattr(self, name).cpu() for name in self.NAMES}}

    def over_ranks(self, accelerator: Accelerator) -> dict:
        """The epoch's train loss, accuracy and samples over every rank's samples (one all-reduce)."""
        totals = torch.stack([self.loss, self.correct.double(), self.samples.double()])
        loss, correct, samples = accelerator.reduce(totals, reduction="sum").tolist()
        return {"loss": loss / samples, "accuracy": correct / samples, "samples": int(samples)}


def epoch_row(epoch: int, train: dict, evaluation: EvalResult | None, split: str) -> dict:
    """`train`: the epoch's loss, accuracy, samples and seconds (all ranks) from the trainer, and
    eval_seconds; `evaluation`: the epoch's on `split` (val, or test when nothing is held out), None for an
    epoch not evaluated (--val-every), whose row has no `split` keys."""
    row = {
        "epoch": epoch + 1,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "train_samples": train["samples"],
        "epoch_seconds": train["seconds"],  # training only; the evaluation's are {split}_seconds
        "samples_per_second": train["samples_per_second"],  # of what this job trained in the epoch
    }
    if evaluation is not None:
        row[f"{split}_loss"], row[f"{split}_accuracy"] = evaluation.loss, evaluation.accuracy
        row[f"{split}_samples"], row[f"{split}_seconds"] = evaluation.count, train["eval_seconds"]
    return row


def final_results(
    state: TrainingState,
    last: EvalResult,
    test: EvalResult,
    kept_step: int,
    seconds: float,
    facts: dict,
    steps_per_epoch: int,
    ranks: dict,
    speed: dict,
) -> dict:
    """summary.json: the kept weights' test loss and accuracy (and validation accuracy, when a
    validation split chose them), the last weights' validation accuracy, how far training went, its
    seconds, and the system facts.

    `last`: the last epoch's evaluation (on the validation split when there is one, else on test).
    "epochs" counts whole epochs; with "steps" and "steps_per_epoch" it tells where --max-steps stopped.
    `ranks`: each rank's host and step times, and the slowest rank's cost (train/stragglers.py).
    `speed`: FLOPs per sample, the job's peak, achieved FLOP/s and MFU (train/flops.py, Utilization.summary),
    and where the job's time went ("time_split": train/time_split.py).
    """
    chosen = state.best_step >= 0  # a validation split chose the weights
    selection = {"kept": "best" if chosen else "last", "kept_step": kept_step}
    if chosen:
        selection |= {"val_accuracy": state.best_accuracy, "last_val_accuracy": last.accuracy}
    return {
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        **selection,
        "epochs": state.epoch,
        "steps": state.step,
        "steps_per_epoch": steps_per_epoch,
        "world_size_changes": state.world_size_changes,  # resumes on another number of processes
        "seconds": seconds,
        **speed,
        "ranks": ranks,
        **facts,
    }
