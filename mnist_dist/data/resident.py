"""The fast path: a whole training split held on the training device, batches taken by one gather.

MNIST-family images are tiny (MNIST's 60,000 training images are 47 MB as uint8), so they fit in
any GPU's memory, and in CPU RAM they are already there. A DataLoader spends more time collating
than LeNet spends computing; indexing one uint8 tensor costs almost nothing. The indices come from
the same sharding code as the DataLoader path (data/sharding.py), so both paths see the same samples.
"""

from collections.abc import Iterator

import torch

from mnist_dist.data.images import ImageSet

# Use the resident path only when the split takes at most this share of the device's free memory.
MAX_SHARE_OF_FREE_MEMORY = 0.25


def fits_on(dataset: ImageSet, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # CPU: the split is in RAM already; MPS shares it
    free_bytes, _ = torch.cuda.mem_get_info(device)
    size = dataset.images.nbytes + dataset.labels.nbytes
    return size <= MAX_SHARE_OF_FREE_MEMORY * free_bytes


class ResidentLoader:
    def __init__(self, dataset: ImageSet, device: torch.device):
        self.images = dataset.images.to(device)  # uint8 (N, C, H, W): converted per batch, on the device
        self.labels = dataset.labels.to(device)
        self.device = device

    def batches(self, indices: list[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) for consecutive slices of `indices`, like a DataLoader with that sampler."""
        order = torch.as_tensor(indices, dtype=torch.int64, device=self.device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # index_select, not images[batch]: advanced indexing costs 6x as much on the CPU here.
            yield self.images.index_select(0, batch), self.labels.index_select(0, batch)
