"""The validation split: samples held out of the training split to choose the model on (early stopping,
the best checkpoint, the kept weights), so that the test split is used once, at the end.

Which samples are held out depends on the labels, the size and the seed only: the same on every rank,
for any number of processes, and on every resume. The split is stratified: each class gives its share.
"""

import torch

from mnist_dist.data.images import ImageSet
from mnist_dist.errors import ConfigError

# mnist.pkl.gz carries its own validation split: the last 10,000 of the 60,000 training images
# (data/pickles.py puts its train and valid splits one after the other).
MNIST_PKL_VALID = 10_000


def held_out_count(size: float, total: int) -> int:
    """`size` as a number of samples: below 1 a fraction of `total`, from 1 on a count (config.py
    checked that it is whole)."""
    return round(size * total) if size < 1 else int(size)


def stratified_indices(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` indices of `labels`, each class's share of them in proportion to its size (largest
    remainders settle the rounding), drawn by `seed`; sorted."""
    classes, sizes = torch.unique(labels, return_counts=True)
    exact = sizes.double() * count / len(labels)
    shares = exact.floor().long()
    by_remainder = torch.argsort(exact - shares, descending=True, stable=True)
    shares[by_remainder[: count - int(shares.sum())]] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, share in zip(classes.tolist(), shares.tolist()):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:share]])
    return torch.cat(chosen).sort().values


def split_validation(dataset: str, train: ImageSet, size: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """(the training samples left, the validation split), or (train, None) when `size` is 0."""
    if size == 0:
        return train, None
    if dataset == "mnist-pkl":  # its own validation split, whatever the size
        held_out = torch.arange(len(train) - MNIST_PKL_VALID, len(train))
    else:
        count = held_out_count(size, len(train))
        if not 0 < count < len(train):
            raise ConfigError(
                f"val_size {size:g} holds out {count} of the {len(train)} training samples of {dataset}: "
                "pass a fraction such as 0.1, a count below the training split's size, or 0 to hold out none."
            )
        held_out = stratified_indices(train.labels, count, seed)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[held_out] = False
    return subset(train, keep.nonzero().flatten()), subset(train, held_out)


def subset(images: ImageSet, indices: torch.Tensor) -> ImageSet:
    return ImageSet(images.images.index_select(0, indices), images.labels.index_select(0, indices))
