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
        logits = model(normalize(images.to(accelerator.device, non_blocking=True)))
        loss_sums.append(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct_counts.append((logits.argmax(dim=1) == labels).sum())
        counts.append(len(labels))
    # One host sync for the whole split: (batch number, loss sum, correct, count) per batch.
    totals = torch.stack([torch.stack(loss_sums).double(), torch.stack(correct_counts).double()]).tolist() if counts else [[], []]
    rows = list(zip(shard.batch_numbers, *totals, counts))
    if accelerator.num_processes > 1:
        rows = gather_object(rows)
    rows.sort()
    model.train(was_training)
    count = sum(row[3] for row in rows)
    correct = int(sum(row[2] for row in rows))
    loss = sum(row[1] for row in rows) / count
    return EvalResult(loss=loss, accuracy=correct / count, correct=correct, count=count)
