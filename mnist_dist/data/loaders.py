"""This rank's training batches, on the training device: one contract, two ways to make them.

    loader = build_train_loader(config, data.train, device, rank, world_size)
    loader.set_epoch(epoch, skip_batches=0)   # a new shuffle, the same on every rank; skip on resume
    len(loader)                               # batches left in the epoch
    for images, labels in loader: ...         # uint8 (B, C, H, W), augmented if asked, and int64 (B,),
                                              # already on the device

The trainer holds one loader and never asks which kind it is:
- `ResidentBatches` (the fast path): the whole split lives on the device and a batch is one gather.
  MNIST's 60,000 training images are 47 MB as uint8, so they fit on any GPU, and in CPU RAM they
  are already there. A DataLoader spends more time collating than LeNet spends computing.
- `DataLoaderBatches` (the classic path, `--loader dataloader`): a torch DataLoader, with workers if
  asked, whose batches are moved to the device.
Both take their indices from the same sampler (data/sharding.py), so both feed identical batches.
"""

import math
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from mnist_dist.config import Config
from mnist_dist.data.augment import Augmenter
from mnist_dist.data.images import ImageSet, collate_batched
from mnist_dist.data.sharding import train_indices, train_sampler

Batch = tuple[torch.Tensor, torch.Tensor]

# Use the resident path only when the split takes at most this share of the device's free memory.
MAX_SHARE_OF_FREE_MEMORY = 0.25


class TrainBatches:
    """The contract: `set_epoch`, `len()`, and iteration over (images, labels) on the device.

    `augment` (--augment): each sample's transform, drawn from (seed, epoch, sample index).
    """

    def __init__(
        self,
        dataset: ImageSet,
        batch_size: int,
        device: torch.device,
        rank: int,
        world_size: int,
        seed: int,
        augment: Augmenter | None = None,
    ):
        self.sampler = train_sampler(dataset, rank, world_size, seed)
        self.batch_size = batch_size
        self.device = device
        self.indices: list[int] = []  # this epoch's samples still to train, in order
        self.epoch = 0
        self.augment = augment

    @property
    def batches_per_epoch(self) -> int:
        """Batches in a whole epoch on this rank (the sampler pads, so every rank has the same count)."""
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Train `epoch` from its batch `skip_batches` on (the batches a resumed run already trained)."""
        self.epoch = epoch
        self.indices = train_indices(self.sampler, epoch)[skip_batches * self.batch_size :]

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError

    def augmented(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """`images` of the dataset positions `indices`, augmented when --augment is on."""
        return images if self.augment is None else self.augment(images, indices, self.epoch)


class ResidentBatches(TrainBatches):
    def __init__(self, dataset: ImageSet, *shard, augment: Augmenter | None = None):
        super().__init__(dataset, *shard, augment=augment)
        self.images = dataset.images.to(self.device)  # uint8 (N, C, H, W): converted per batch, on the device
        self.labels = dataset.labels.to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        order = torch.as_tensor(self.indices, dtype=torch.int64, device=self.device)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            # index_select, not images[batch]: advanced indexing costs 6x as much on the CPU here.
            yield self.augmented(self.images.index_select(0, batch), batch), self.labels.index_select(0, batch)


class DataLoaderBatches(TrainBatches):
    def __init__(self, dataset: ImageSet, *shard, augment: Augmenter | None = None, num_workers: int = 0):
        super().__init__(dataset, *shard, augment=augment)
        self.dataset = dataset
        self.num_workers = num_workers  # worker processes (0: load in the training process; the data is in memory)

    def __iter__(self) -> Iterator[Batch]:
        # Not passed to accelerator.prepare, which would shard it a second time. Its own generator
        # keeps the DataLoader from drawing on the global RNG, whose state a checkpoint restores.
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.indices,
            num_workers=self.num_workers,
            collate_fn=collate_batched,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator(),
        )
        order = torch.as_tensor(self.indices, dtype=torch.int64, device=self.device)
        for start, (images, labels) in zip(range(0, len(order), self.batch_size), loader):
            images = images.to(self.device, non_blocking=True)
            yield (
                self.augmented(images, order[start : start + self.batch_size]),
                labels.to(self.device, non_blocking=True),
            )


def fits_on(dataset: ImageSet, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # CPU: the split is in RAM already; MPS shares it
    free_bytes, _ = torch.cuda.mem_get_info(device)
    size = dataset.images.nbytes + dataset.labels.nbytes
    return size <= MAX_SHARE_OF_FREE_MEMORY * free_bytes


def build_train_loader(config: Config, dataset: ImageSet, device: torch.device, rank: int, world_size: int):
    """`--loader resident`, `dataloader`, or `auto`: resident when the split fits on the device."""
    shard = (dataset, config.batch_size, device, rank, world_size, config.seed)
    augment = Augmenter(config.dataset, config.seed, config.augment_shift) if config.augment else None
    if config.loader == "resident" or (config.loader == "auto" and fits_on(dataset, device)):
        return ResidentBatches(*shard, augment=augment)
    return DataLoaderBatches(*shard, augment=augment, num_workers=config.num_workers)


def accumulation_groups(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """Consecutive batches whose gradients add up to one optimizer step (the last group may be shorter)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
