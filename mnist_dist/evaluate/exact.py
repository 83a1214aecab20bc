"""Exact distributed evaluation: every sample of a split counted once, the same numbers for any world size."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.config import Config
from mnist_dist.data.datasets import Data
from mnist_dist.data.images import Normalizer
from mnist_dist.data.sharding import EvalShard, eval_shard
from mnist_dist.distributed import share_rank0_buffers


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


class EvalSplits:
    """What a run evaluates, each split sharded for this rank: after every epoch (or every --val-every) the
    validation split, which chooses the kept weights, or the test split when nothing is held out
    (--val-size 0); at the end the test split, once, for the kept weights."""

    def __init__(self, data: Data, config: Config, normalize: Normalizer, accelerator: Accelerator):
        rank, world_size = accelerator.process_index, accelerator.num_processes
        self.held_out = data.val is not None
        self.epoch_name = "val" if self.held_out else "test"  # the name of each epoch's numbers
        self.epoch_set = data.val if self.held_out else data.test
        self.test_set = data.test
        self.epoch_shard = eval_shard(self.epoch_set, config.eval_batch_size, rank, world_size, config.num_workers)
        self.test_shard = (
            eval_shard(data.test, config.eval_batch_size, rank, world_size, config.num_workers)
            if self.held_out
            else self.epoch_shard
        )
        self.normalize, self.accelerator = normalize, accelerator

    def describe(self) -> str:
        if self.held_out:
            return (
                f"validation split: {len(self.epoch_set):,} training samples held out to choose the kept weights; "
                f"the test split ({len(self.test_set):,}) is evaluated once, at the end"
            )
        return (
            "nothing held out (--val-size 0): the epochs are evaluated on the test split, the run keeps its last "
            "weights, and nothing is chosen on the test split"
        )

    def evaluate(self, module: torch.nn.Module, test: bool = False) -> EvalResult:
        """`module`'s exact loss and accuracy on the epochs' split, or on the test split. Every rank
        takes rank 0's buffers first (BatchNorm statistics): all evaluate the model that is saved."""
        shard, split = (self.test_shard, self.test_set) if test else (self.epoch_shard, self.epoch_set)
        share_rank0_buffers(module, self.accelerator.num_processes)
        result = evaluate(module, shard, self.normalize, self.accelerator)
        if result.count != len(split):  # the sharding's promise, checked every time
            raise RuntimeError(f"evaluated {result.count} samples, the split has {len(split)}")
        return result

    def predict_test(self, module: torch.nn.Module) -> SplitPredictions:
        return predict_split(module, self.test_shard, self.normalize, self.accelerator)
