"""Device-side augmentation: shifts move pixels without changing them, flips mirror, and each sample's
transform depends on (seed, epoch, sample index) alone: not on its batch, its rank or the loader."""

import torch

from mnist_dist.data.augment import Augmenter, random_shift, sample_draws
from mnist_dist.data.images import ImageSet
from mnist_dist.data.loaders import DataLoaderBatches, ResidentBatches


def test_a_shift_moves_a_pixel_by_at_most_the_limit_and_keeps_its_value():
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 14, 14] = 200
    shifted = random_shift(images, 2, False, sample_draws(torch.arange(64), seed=0, epoch=0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    rows, cols = (shifted[:, 0] == 200).nonzero()[:, 1:].T
    assert len(rows) == 64 and rows.sub(14).abs().max() <= 2 and cols.sub(14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # each image draws its own shift


def test_zero_shift_with_flip_mirrors_about_half_the_batch():
    images = torch.arange(32 * 3 * 4 * 4, dtype=torch.int64).view(32, 3, 4, 4)
    out = random_shift(images, 0, True, sample_draws(torch.arange(32), seed=1, epoch=0))
    mirrored = [torch.equal(out[i], images[i].flip(2)) for i in range(32)]
    kept = [torch.equal(out[i], images[i]) for i in range(32)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 4 < sum(mirrored) < 28


def test_the_batched_gather_is_each_images_own_window_mirrored_where_drawn():
    """random_shift against the plain definition, one image at a time: the padded image's window at (dy, dx),
    flipped where bit 15 says so; channels, any shift, with and without flips."""
    images = torch.randint(0, 256, (40, 3, 9, 7), dtype=torch.uint8)
    draws = sample_draws(torch.arange(40), seed=5, epoch=2)
    for shift, flip in ((0, True), (1, True), (2, False), (3, True)):
        padded, size = torch.nn.functional.pad(images, (shift,) * 4), 2 * shift + 1
        expected = []
        for image, draw in zip(padded, draws.tolist()):
            dy, dx = (draw & 0xFFFF) % size, (draw >> 16) % size
            window = image[:, dy : dy + 9, dx : dx + 7]
            expected.append(window.flip(2) if flip and (draw >> 15) & 1 else window)
        assert torch.equal(random_shift(images, shift, flip, draws), torch.stack(expected)), (shift, flip)


def test_draws_are_uniform_enough_and_differ_by_seed_and_epoch():
    draws = sample_draws(torch.arange(10_000), seed=3, epoch=0)
    for shifts in ((draws & 0xFFFF) % 5, (draws >> 16) % 5):  # dy and dx
        counts = torch.bincount(shifts, minlength=5)
        assert counts.min() > 1_800 and counts.max() < 2_200  # 2,000 each for a uniform draw
    assert 4_800 < int(((draws >> 15) & 1).sum()) < 5_200  # the flip
    assert not torch.equal(draws, sample_draws(torch.arange(10_000), seed=4, epoch=0))
    assert not torch.equal(draws, sample_draws(torch.arange(10_000), seed=3, epoch=1))
    assert torch.equal(draws, sample_draws(torch.arange(10_000), seed=3, epoch=0))


def test_a_sample_gets_the_same_transform_in_any_batch_position_or_batch():
    augment = Augmenter("cifar10", seed=7)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    indices = torch.arange(1000, 1040)
    whole = augment(images, indices, epoch=2)
    order = torch.randperm(40)
    shuffled = torch.cat([augment(images[part], indices[part], epoch=2) for part in order.split(7)])
    assert torch.equal(shuffled, whole[order])
    assert not torch.equal(augment(images, indices, epoch=3), whole)


def test_ranks_loaders_and_batch_sizes_see_the_same_augmented_samples():
    """Sample i in epoch e looks the same on rank 0 or 1 of 2 at batch 8, alone at batch 16, on either path."""
    dataset = ImageSet(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), torch.arange(64))
    cpu = torch.device("cpu")
    seen = {}
    for kind, batch_size, world_size in ((ResidentBatches, 16, 1), (ResidentBatches, 8, 2), (DataLoaderBatches, 8, 2)):
        for rank in range(world_size):
            loader = kind(dataset, batch_size, cpu, rank, world_size, 11, augment=Augmenter("digits", seed=11))
            loader.set_epoch(5)
            for images, labels in loader:  # labels are the samples' indices here
                for image, index in zip(images, labels.tolist()):
                    assert torch.equal(seen.setdefault(index, image), image), index
    assert len(seen) == 64
    assert sum(not torch.equal(seen[i], dataset.images[i]) for i in range(64)) > 40  # most images moved


def test_only_the_sets_whose_classes_survive_a_mirror_are_flipped():
    from mnist_dist.config import DATASETS, MIRRORED

    assert [name for name in DATASETS if Augmenter(name, seed=0).flip] == list(MIRRORED)
    fashion = Augmenter("fashion-mnist", seed=0)
    images = torch.arange(64 * 28 * 28, dtype=torch.int64).view(64, 1, 28, 28) % 251
    out = fashion(images.to(torch.uint8), torch.arange(64), epoch=0)
    mirrored = sum(torch.equal(out[i], images[i].flip(2).to(torch.uint8)) for i in range(64))
    kept = sum(torch.equal(out[i], images[i].to(torch.uint8)) for i in range(64))
    assert mirrored + kept == 64 and 10 < mirrored < 54  # flipped or untouched: no shifts for clothing


def test_augment_shift_replaces_the_datasets_shift_and_keeps_its_flips():
    assert (Augmenter("fashion-mnist", seed=0).max_shift, Augmenter("digits", seed=0).max_shift) == (0, 2)
    fashion = Augmenter("fashion-mnist", seed=0, max_shift=1)  # --augment-shift 1 (configs/fashion-94.yaml)
    assert (fashion.max_shift, fashion.flip) == (1, True)
    assert Augmenter("digits", seed=0, max_shift=0).max_shift == 0  # 0 turns the digit sets' shifts off
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 14, 10] = 200  # off the vertical axis, so a mirror image moves it to column 17
    out = fashion(images, torch.arange(64), epoch=0)
    rows, cols = (out[:, 0] == 200).nonzero()[:, 1:].T
    assert len(rows) == 64 and rows.sub(14).abs().max() <= 1
    assert set(cols.tolist()) <= {9, 10, 11, 16, 17, 18} and {9, 11, 16, 18} & set(cols.tolist())
