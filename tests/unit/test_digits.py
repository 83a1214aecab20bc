"""The built-in `digits` dataset: shapes, balance, determinism, sanity of the pixels, the cache."""

import pytest
import torch

from mnist_dist.data import digits
from mnist_dist.data.digits import CLASS_NAMES, MEAN, STD, generate_digits, load_digits
from mnist_dist.data.images import ImageSet

SMALL = {"train_size": 300, "test_size": 100}


def cache_file(cache_dir, seed=0, train_size=300, test_size=100):
    return cache_dir / "digits" / f"digits-v{digits.VERSION}-seed{seed}-{train_size}-{test_size}.pt"


def test_images_are_uint8_1x28x28_and_labels_int64():
    images, labels = generate_digits(50, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (50, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (50,)
    assert len(ImageSet(images, labels)) == 50
    assert CLASS_NAMES == tuple("0123456789")


def test_classes_are_balanced_to_within_one():
    _, labels = generate_digits(203, seed=3)
    counts = torch.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.max() - counts.min() <= 1


def test_same_seed_gives_identical_tensors_and_another_seed_does_not():
    first, second, other = generate_digits(100, 7), generate_digits(100, 7), generate_digits(100, 8)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_output_does_not_depend_on_chunk_size(monkeypatch):
    images, _ = generate_digits(100, 5)
    monkeypatch.setattr(digits, "CHUNK", 7)
    assert torch.equal(generate_digits(100, 5)[0], images)


def test_generation_restores_the_thread_count():
    threads = torch.get_num_threads()
    generate_digits(10, seed=0)
    assert torch.get_num_threads() == threads


def test_generation_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    generate_digits(20, seed=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_every_image_has_ink_and_none_is_saturated():
    images, _ = generate_digits(500, seed=2)
    pixels = images.float().div(255).flatten(1)  # (N, 784)
    assert 0.05 < pixels.mean() < 0.3
    ink_per_image = (pixels > 0.5).sum(1)
    assert ink_per_image.min() >= 20  # a short "1" still covers tens of pixels
    assert ink_per_image.max() <= 784 // 2


def test_labels_match_the_drawn_glyphs():
    """A nearest-class-mean classifier, far from perfect, is still far above chance (10%)."""
    train_images, train_labels = generate_digits(2000, seed=10)
    test_images, test_labels = generate_digits(500, seed=11)
    train, test = train_images.float().flatten(1), test_images.float().flatten(1)
    centroids = torch.stack([train[train_labels == c].mean(0) for c in range(10)])  # (10, 784)
    predictions = torch.cdist(test, centroids).argmin(1)
    assert (predictions == test_labels).float().mean() > 0.5


def test_mean_and_std_constants_match_the_default_train_split(data_dir):
    train_images, *_ = load_digits(data_dir)  # the session's data folder: generated once, shared with training
    pixels = train_images.float().div(255)
    assert pixels.mean().item() == pytest.approx(MEAN, abs=0.005)
    assert pixels.std().item() == pytest.approx(STD, abs=0.005)


def test_train_and_test_come_from_different_seeds(tmp_path):
    train_images, train_labels, test_images, test_labels = load_digits(tmp_path, seed=4, **SMALL)
    assert train_images.shape == (300, 1, 28, 28) and test_images.shape == (100, 1, 28, 28)
    assert train_labels.shape == (300,) and test_labels.shape == (100,)
    assert not torch.equal(train_images[:100], test_images)


def test_cache_is_written_then_reused_without_regenerating(tmp_path, monkeypatch):
    first = load_digits(tmp_path, seed=1, **SMALL)
    assert cache_file(tmp_path, seed=1).is_file()
    assert list((tmp_path / "digits").iterdir()) == [cache_file(tmp_path, seed=1)]  # no temp left

    def refuse(*args, **kwargs):
        raise AssertionError("generate_digits called although the cache holds the data")

    monkeypatch.setattr(digits, "generate_digits", refuse)
    second = load_digits(tmp_path, seed=1, **SMALL)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_a_corrupt_cache_file_is_regenerated_and_replaced(tmp_path):
    expected = load_digits(tmp_path, seed=2, **SMALL)
    path = cache_file(tmp_path, seed=2)
    path.write_bytes(b"not a torch file")
    again = load_digits(tmp_path, seed=2, **SMALL)
    assert all(torch.equal(a, b) for a, b in zip(expected, again))
    assert torch.load(path, weights_only=True)["train_images"].shape == (300, 1, 28, 28)


def test_a_cache_of_another_size_is_not_used(tmp_path):
    load_digits(tmp_path, seed=0, train_size=30, test_size=10)
    cache_file(tmp_path, 0, 30, 10).rename(cache_file(tmp_path, 0, 40, 10))  # right name, wrong content
    train_images, *_ = load_digits(tmp_path, seed=0, train_size=40, test_size=10)
    assert train_images.shape == (40, 1, 28, 28)


def test_an_unwritable_cache_dir_still_returns_the_data(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache folder should be")
    train_images, train_labels, test_images, test_labels = load_digits(blocker / "cache", seed=0, **SMALL)
    assert train_images.shape == (300, 1, 28, 28) and len(test_labels) == 100
