"""Augmentation on the training device, a whole batch at a time, the same whatever the world size.

Digit-like sets get random shifts of up to 2 pixels; Fashion-MNIST random horizontal flips only
(its items are centred: shifts of 1 or 2 pixels cost the cnn accuracy in every budget up to 2 minutes;
the deeper cnn-deep of the 5-minute recipe, which overfits more, takes 1 pixel: --augment-shift,
docs/BENCHMARKS.md); CIFAR-10 the classic random crop (4 pixels of zero padding) and horizontal flip.
Works on uint8 batches before normalization, so the padding is black background.

Each sample's draws are a function of (seed, epoch, sample index) only: a counter-based generator
(an integer hash of those numbers), not a random stream consumed in batch order. So an image gets
the same shift and flip in a given epoch with 1 or 8 processes, any batch size per process,
gradient accumulation, either loader, and after a resume in the middle of the epoch; and the
global RNG (weights, dropout) is left alone.
"""

import torch
import torch.nn.functional as F

# dataset -> (largest shift in pixels, random horizontal flip)
POLICIES = {"cifar10": (4, True), "fashion-mnist": (0, True)}  # flips where config.MIRRORED allows them
DEFAULT_POLICY = (2, False)  # digits, mnist, mnist-pkl: no flips (a flipped 2 is no 2)

MASK = 0xFFFFFFFF  # values are kept in [0, 2^32) inside int64 tensors


def hash32(x):
    """A 32-bit integer hash (xor-shift-multiply) of a Python int or of int64 tensor values in [0, 2^32),
    the same bits on every device. Both multipliers are below 2^31, so no product leaves int64's range."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & MASK
    return x ^ (x >> 16)


def sample_draws(indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """int64 (N,) of uniform 32-bit values, one per sample `indices` (dataset positions) in `epoch`.

    One hash per sample, few tensor ops: at LeNet's batch of 100 on a CPU each op costs more in
    overhead than in arithmetic. Its bits are split between the draws (random_shift).
    """
    key = hash32(hash32(seed & MASK) ^ (epoch & MASK))  # a Python int: one per (seed, epoch)
    return hash32(indices ^ key)  # dataset positions are below 2^32 already


def random_shift(images: torch.Tensor, max_shift: int, flip: bool, draws: torch.Tensor) -> torch.Tensor:
    """Each image moved by its own (dy, dx) in [-max_shift, max_shift], optionally mirrored.

    `draws`: int64 (N,) from `sample_draws`: bits 0-15 give dy, bits 16-31 dx, bit 15 the flip (the
    modulo of a 16-bit value by 2 * max_shift + 1 is uniform to within 1 part in 13,000). A new tensor,
    but `images` itself where nothing moves (no shift, no flip).
    """
    mirror = ((draws >> 15) & 1).bool() if flip else None
    if not max_shift:  # flips alone (Fashion-MNIST's policy): no gather at all
        return images if mirror is None else mirrored(images, mirror)
    n, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)  # (N, C, H + 2s, W + 2s)
    padded_w = w + 2 * max_shift
    dy = (draws & 0xFFFF) % (2 * max_shift + 1)  # (N,): the padded window's top row
    dx = (draws >> 16) % (2 * max_shift + 1)  # (N,): its left column
    cols = torch.arange(w, device=images.device).expand(n, w)  # (N, W): the window's columns, mirrored where drawn
    if mirror is not None:
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    rows = torch.arange(h, device=images.device)[None, :, None] + dy[:, None, None]  # (N, H, 1)
    index = (rows * padded_w + (cols + dx[:, None])[:, None, :]).view(n, 1, h * w)  # each pixel's place in padded
    # One gather over each image's flattened padded pixels: 2-5x faster than indexing with 4 index tensors
    # (bench/augment.py).
    return padded.reshape(n, c, -1).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def mirrored(images: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """`images` (N, C, H, W) with those where `mirror` (N,) is True flipped left to right. torch.where rather
    than copying the chosen ones by index: their count would cost a GPU a host sync every batch."""
    return torch.where(mirror[:, None, None, None], images.flip(3), images)


class Augmenter:
    """The dataset's policy, drawn per sample from (seed, epoch, sample index); `max_shift` (--augment-shift)
    replaces the policy's shift unless it is -1."""

    def __init__(self, dataset: str, seed: int, max_shift: int = -1):
        self.max_shift, self.flip = POLICIES.get(dataset, DEFAULT_POLICY)
        if max_shift != -1:
            self.max_shift = max_shift
        self.seed = seed

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """uint8 (N, C, H, W) images of the dataset positions `indices` (N,), augmented for `epoch`."""
        draws = sample_draws(indices, self.seed, epoch)
        return random_shift(images, self.max_shift, self.flip, draws)
