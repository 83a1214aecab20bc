"""The validation split: held out of the training split by seed, stratified, and the same whoever asks."""

import pytest
import torch

from mnist_dist.config import make_config
from mnist_dist.data.images import ImageSet
from mnist_dist.data.val_split import MNIST_PKL_VALID, split_validation
from mnist_dist.errors import ConfigError


def image_set(labels: list[int]) -> ImageSet:
    """Each image's pixels hold its own index, so a subset says which samples it took."""
    index = torch.arange(len(labels))
    images = (index % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    images[:, 0, 0, 1] = (index // 256).to(torch.uint8)
    return ImageSet(images, torch.tensor(labels))


def indices(subset: ImageSet) -> list[int]:
    return (subset.images[:, 0, 0, 0].long() + 256 * subset.images[:, 0, 0, 1].long()).tolist()


# 1,000 samples in 4 unequal classes: 500, 300, 150, 50.
LABELS = [0] * 500 + [1] * 300 + [2] * 150 + [3] * 50


@pytest.mark.parametrize("size, expected", [(0.1, 100), (0.25, 250), (100, 100), (37, 37)])
def test_the_split_is_disjoint_complete_and_stratified(size, expected):
    train, val = split_validation("digits", image_set(LABELS), size, seed=0)
    held, kept = indices(val), indices(train)
    assert len(held) == expected and len(kept) == 1000 - expected
    assert sorted(held + kept) == list(range(1000))  # disjoint, and nothing lost
    counts = torch.bincount(val.labels, minlength=4).tolist()
    for share, count in zip((0.5, 0.3, 0.15, 0.05), counts):  # each class its share, within one sample
        assert abs(count - share * expected) < 1
    assert val.labels.tolist() == [LABELS[i] for i in held]  # labels travel with their images


def test_the_same_seed_holds_out_the_same_samples_and_another_seed_others():
    first = indices(split_validation("digits", image_set(LABELS), 0.1, seed=0)[1])
    again = indices(split_validation("digits", image_set(LABELS), 0.1, seed=0)[1])
    other = indices(split_validation("digits", image_set(LABELS), 0.1, seed=1)[1])
    assert first == again and first != other


def test_size_zero_holds_out_nothing():
    samples = image_set(LABELS)
    train, val = split_validation("digits", samples, 0, seed=0)
    assert val is None and train is samples


def test_mnist_pkl_holds_out_its_own_validation_split():
    labels = [index % 10 for index in range(MNIST_PKL_VALID + 500)]
    train, val = split_validation("mnist-pkl", image_set(labels), 0.1, seed=3)
    assert indices(val) == list(range(500, MNIST_PKL_VALID + 500)) and indices(train) == list(range(500))


def test_a_split_that_leaves_nothing_to_train_on_or_to_validate_is_refused():
    for size in (1000, 5000, 0.0001):
        with pytest.raises(ConfigError, match="holds out"):
            split_validation("digits", image_set(LABELS), size, seed=0)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"val_size": -0.1}, "val_size must be 0 or more"),
        ({"val_size": 2.5}, "fraction below 1 or a whole number"),
        ({"val_size": 0, "early_stopping_patience": 2}, "early stopping chooses on the validation split"),
    ],
)
def test_bad_val_sizes_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(values)
