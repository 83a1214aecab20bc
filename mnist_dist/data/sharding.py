"""The one place that decides which samples each process sees.

Training: `DistributedSampler` (the PyTorch standard): each epoch a permutation seeded by
(seed, epoch), split round-robin across ranks; when the dataset does not divide evenly it
repeats a few samples so that every rank takes the same number of steps.

Evaluation: the test set is cut into fixed batches [0, B), [B, 2B), ... and batch k goes to rank
k % world_size. No padding, so every sample is counted exactly once, and each batch holds the
same images as in a 1-process run, so per-batch results are the same bits whatever the world size.
"""

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, DistributedSampler

from mnist_dist.data.images import ImageSet, collate_batched


def train_sampler(dataset: ImageSet, rank: int, world_size: int, seed: int) -> DistributedSampler:
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def train_indices(sampler: DistributedSampler, epoch: int) -> list[int]:
    """The indices this rank trains on in `epoch`, in order."""
    sampler.set_epoch(epoch)
    return list(sampler)


def eval_batches(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[tuple[int, list[int]]]:
    """(batch number, indices) for each evaluation batch this rank owns."""
    starts = range(0, num_samples, batch_size)
    return [
        (number, list(range(start, min(start + batch_size, num_samples))))
        for number, start in enumerate(starts)
        if number % world_size == rank
    ]


@dataclass
class EvalShard:
    """This rank's evaluation batches and their global batch numbers (for an exact, ordered reduce)."""

    batch_numbers: list[int]
    loader: DataLoader


def eval_shard(dataset: ImageSet, batch_size: int, rank: int, world_size: int, num_workers: int) -> EvalShard:
    batches = eval_batches(len(dataset), batch_size, rank, world_size)
    loader = DataLoader(
        dataset,
        batch_sampler=[indices for _, indices in batches],
        num_workers=num_workers,
        collate_fn=collate_batched,
        pin_memory=torch.cuda.is_available(),
    )
    return EvalShard([number for number, _ in batches], loader)
