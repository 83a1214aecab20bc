"""Exact distributed evaluation: every test sample counted once, the same numbers for any world size."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.data.images import Normalizer
from mnist_dist.data.sharding import EvalShard


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy over the whole split (no label smoothing)
    accuracy: float
    correct: int
    count: int


@torch.inference_mode()
def evaluate(model: torch.nn.Module, shard: EvalShard, normalize: Normalizer, accelerator: Accelerator) -> EvalResult:
    """Run this rank's batches, then combine every rank's per-batch sums in batch order.

    Batches hold the same images whatever the world size (see data/sharding.py), and the sums are
    added in the same order, so 1 and N processes give the same bits.
    """
    was_training = model.training
    model.eval()
    loss_sums, correct_counts, counts = [], [], []
    for images, labels in shard.loader:
        labels = labels.to(accelerator.device, non_blocking=True)
        logits = model(normalize(images.to(accelerator.device, non_blocking=True)))  # (B, classes)
        loss_sums.append(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct_counts.append((logits.argmax(dim=1) == labels).sum())
        counts.append(len(labels))
    # One host sync for the whole split: (batch number, loss sum, correct, count) per batch.
    totals = (
        torch.stack([torch.stack(loss_sums).double(), torch.stack(correct_counts).double()]).tolist()
        if counts
        else [[], []]
    )
    rows = list(zip(shard.batch_numbers, *totals, counts))
    rows = gather_object(rows)  # unchanged in a single process
    rows.sort()  # by batch number: float sums added in one order whatever the world size
    model.train(was_training)
    count = sum(row[3] for row in rows)
    correct = int(sum(row[2] for row in rows))
    loss = sum(row[1] for row in rows) / count
    return EvalResult(loss=loss, accuracy=correct / count, correct=correct, count=count)


@dataclass
class SplitPredictions:
    """Every sample of a split, in dataset order: what the model said and how sure it was."""

    loss: float  # mean cross-entropy, summed exactly as evaluate() does
    labels: torch.Tensor  # int64 (N,): the true classes
    predicted: torch.Tensor  # int64 (N,): argmax of the logits
    probabilities: torch.Tensor  # float32 (N, classes): softmax of the logits

    @property
    def count(self) -> int:
        return len(self.labels)

    @property
    def correct(self) -> int:
        return int((self.predicted == self.labels).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.count


@torch.inference_mode()
def predict_split(
    model: torch.nn.Module, shard: EvalShard, normalize: Normalizer, accelerator: Accelerator
) -> SplitPredictions:
    """Like evaluate(), but every rank ends with the per-sample results of the whole split.

    Each rank keeps (batch number, loss sum, labels, predictions, probabilities) per batch; the
    ranks exchange them and order them by batch number. Batches are contiguous slices of the
    split, so concatenating them in that order restores dataset order.
    """
    was_training = model.training
    model.eval()
    rows = []
    for number, (images, labels) in zip(shard.batch_numbers, shard.loader):
        labels = labels.to(accelerator.device, non_blocking=True)
        logits = model(normalize(images.to(accelerator.device, non_blocking=True))).float()
        loss_sum = F.cross_entropy(logits, labels, reduction="sum").double().item()
        rows.append((number, loss_sum, labels.cpu(), logits.argmax(dim=1).cpu(), logits.softmax(dim=1).cpu()))
    rows = gather_object(rows)  # unchanged in a single process
    rows.sort(key=lambda row: row[0])
    model.train(was_training)
    labels = torch.cat([row[2] for row in rows])
    loss = sum(row[1] for row in rows) / len(labels)
    return SplitPredictions(loss, labels, torch.cat([row[3] for row in rows]), torch.cat([row[4] for row in rows]))
