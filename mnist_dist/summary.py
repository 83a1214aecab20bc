"""The numbers a run reports: a row per epoch (metrics.jsonl, W&B, the console's epoch table) and
the final results (summary.json, W&B's summary, the console's closing table)."""

import torch
from accelerate import Accelerator

from mnist_dist.evaluation import EvalResult
from mnist_dist.resume import TrainingState


class EpochSums:
    """This rank's running sums over the epoch, kept on the device so that adding costs no host sync.

    A NaN or inf loss stays in `loss` (a sum of non-negative losses), which the health check reads.
    A checkpoint saves them (`saved`), so a run resumed inside an epoch reports the whole epoch.
    """

    def __init__(self, device: torch.device, saved: dict | None = None):
        sums = saved["epoch_sums"] if saved else {}
        self.loss = sums.get("loss", torch.zeros((), dtype=torch.float64)).to(device)
        self.correct = sums.get("correct", torch.zeros((), dtype=torch.int64)).to(device)
        self.samples = sums.get("samples", torch.zeros((), dtype=torch.int64)).to(device)

    def saved(self) -> dict:
        return {"epoch_sums": {"loss": self.loss.cpu(), "correct": self.correct.cpu(), "samples": self.samples.cpu()}}

    def over_ranks(self, accelerator: Accelerator) -> dict:
        """The epoch's train loss, accuracy and samples over every rank's samples (one all-reduce)."""
        totals = torch.stack([self.loss, self.correct.double(), self.samples.double()])
        loss, correct, samples = accelerator.reduce(totals, reduction="sum").tolist()
        return {"loss": loss / samples, "accuracy": correct / samples, "samples": int(samples)}


def epoch_row(epoch: int, train: dict, evaluation: EvalResult) -> dict:
    """`train`: the epoch's loss, accuracy, samples and seconds (all ranks) from the trainer, and eval_seconds."""
    return {
        "epoch": epoch + 1,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "eval_loss": evaluation.loss,
        "eval_accuracy": evaluation.accuracy,
        "train_samples": train["samples"],
        "eval_samples": evaluation.count,
        "epoch_seconds": train["seconds"],  # training only; evaluation is eval_seconds
        "eval_seconds": train["eval_seconds"],
        "samples_per_second": train["samples_per_second"],  # of what this job trained in the epoch
    }


def final_results(state: TrainingState, evaluation: EvalResult, seconds: float, facts: dict) -> dict:
    """summary.json: the final and best evaluation, how far training went, its seconds, and the system facts."""
    return {
        "final_eval_accuracy": evaluation.accuracy,
        "final_eval_loss": evaluation.loss,
        "best_eval_accuracy": state.best_accuracy,
        "epochs": state.epoch,
        "steps": state.step,
        "seconds": seconds,
        **facts,
    }
