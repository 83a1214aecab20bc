"""Device-side augmentation: shifts move pixels without changing them, flips mirror, seeds repeat."""

import torch

from mnist_dist.data.augment import augmenter, random_shift


def test_a_shift_moves_a_pixel_by_at_most_the_limit_and_keeps_its_value():
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 14, 14] = 200
    torch.manual_seed(0)
    shifted = random_shift(images, 2, flip=False)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    rows, cols = (shifted[:, 0] == 200).nonzero()[:, 1:].T
    assert len(rows) == 64 and rows.sub(14).abs().max() <= 2 and cols.sub(14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # each image draws its own shift


def test_zero_shift_with_flip_mirrors_about_half_the_batch():
    images = torch.arange(32 * 3 * 4 * 4, dtype=torch.int64).view(32, 3, 4, 4)
    torch.manual_seed(1)
    out = random_shift(images, 0, flip=True)
    mirrored = [torch.equal(out[i], images[i].flip(2)) for i in range(32)]
    kept = [torch.equal(out[i], images[i]) for i in range(32)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 4 < sum(mirrored) < 28


def test_the_same_seed_gives_the_same_batch():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    augment = augmenter("cifar10")
    torch.manual_seed(5)
    first = augment(images)
    torch.manual_seed(5)
    assert torch.equal(first, augment(images))
