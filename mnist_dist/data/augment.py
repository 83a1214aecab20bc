"""Augmentation on the training device, a whole batch at a time (no per-image Python).

Digit-like sets get random shifts of up to 2 pixels; CIFAR-10 gets the classic random crop
(4 pixels of zero padding) and horizontal flip. Works on uint8 batches before normalization,
so the padding is black background. Randomness comes from the global torch RNG, which is
seeded and saved in checkpoints.
"""

import torch
import torch.nn.functional as F

# dataset -> (largest shift in pixels, random horizontal flip)
POLICIES = {"cifar10": (4, True)}
DEFAULT_POLICY = (2, False)  # digits, mnist, fashion-mnist, mnist-pkl: no flips (a flipped 2 is no 2)


def random_shift(images: torch.Tensor, max_shift: int, flip: bool) -> torch.Tensor:
    """Each image moved by its own (dy, dx) in [-max_shift, max_shift], optionally mirrored."""
    n, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)  # (N, C, H + 2s, W + 2s)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1), device=images.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1), device=images.device)
    rows = (torch.arange(h, device=images.device) + dy)[:, None, :, None]  # (N, 1, H, 1)
    cols = (torch.arange(w, device=images.device) + dx)[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    shifted = padded[batch, channel, rows, cols]  # (N, C, H, W): one gather for the whole batch
    if flip:
        mirror = torch.rand(n, device=images.device) < 0.5
        shifted = torch.where(mirror[:, None, None, None], shifted.flip(3), shifted)
    return shifted


def augmenter(dataset: str):
    max_shift, flip = POLICIES.get(dataset, DEFAULT_POLICY)
    return lambda images: random_shift(images, max_shift, flip)
