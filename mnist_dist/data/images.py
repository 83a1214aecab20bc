"""The in-memory form every dataset is loaded into: uint8 images and int64 labels."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the normalization need to know about a dataset."""

    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]  # per channel, on the 0..1 scale
    class_names: tuple[str, ...]


class ImageSet(torch.utils.data.Dataset):
    """A whole split in memory: `images` uint8 (N, C, H, W), `labels` int64 (N,).

    Normalization happens later, per batch, on the training device. `__getitems__` lets a
    DataLoader fetch a batch with one indexing op instead of N calls to `__getitem__`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be (N,) with N={len(images)}, got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.images.index_select(0, index), self.labels.index_select(0, index)


def collate_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataLoader's collate_fn for ImageSet: `__getitems__` already returned whole batches."""
    return batch


class Normalizer:
    """uint8 (N, C, H, W) -> float32 normalized by the dataset's mean/std, on the device.

    x = (pixel / 255 - mean) / std is computed as pixel * scale + shift, with the per-channel
    scale = 1 / (255 * std) and shift = -mean / std precomputed: two in-place ops on the new
    float tensor (measured faster than one addcmul, which allocates again).
    """

    def __init__(self, info: DatasetInfo, device: torch.device):
        mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mul_(self.scale).add_(self.shift)
