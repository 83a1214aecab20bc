"""Which samples each rank sees: disjoint, complete, reshuffled per epoch; evaluation exactly once."""

import pytest
import torch

from mnist_dist.data.images import DatasetInfo, ImageSet, Normalizer
from mnist_dist.data.loaders import DataLoaderBatches, ResidentBatches, accumulation_groups
from mnist_dist.data.sharding import eval_batches, train_indices, train_sampler


def image_set(size: int) -> ImageSet:
    return ImageSet(torch.zeros(size, 1, 2, 2, dtype=torch.uint8), torch.zeros(size, dtype=torch.int64))


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_train_shards_are_disjoint_and_cover_the_dataset(world_size):
    dataset = image_set(1000)
    shards = [train_indices(train_sampler(dataset, rank, world_size, seed=3), epoch=0) for rank in range(world_size)]
    assert sum(len(shard) for shard in shards) == 1000
    assert sorted(index for shard in shards for index in shard) == list(range(1000))


def test_train_order_changes_between_epochs_and_follows_the_seed():
    sampler = train_sampler(image_set(100), 0, 2, seed=3)
    epoch0, epoch1 = train_indices(sampler, 0), train_indices(sampler, 1)
    assert epoch0 != epoch1
    assert epoch0 == train_indices(train_sampler(image_set(100), 0, 2, seed=3), 0)
    assert epoch0 != train_indices(train_sampler(image_set(100), 0, 2, seed=4), 0)


@pytest.mark.parametrize("size, batch, world_size", [(1234, 100, 2), (10, 3, 4), (5, 10, 3), (1000, 1000, 2)])
def test_eval_batches_count_every_sample_once(size, batch, world_size):
    shards = [eval_batches(size, batch, rank, world_size) for rank in range(world_size)]
    indices = [index for shard in shards for _, batch_indices in shard for index in batch_indices]
    assert sorted(indices) == list(range(size))
    # The same batches as a 1-process run, only dealt out round-robin.
    numbers = sorted(number for shard in shards for number, _ in shard)
    one_process = eval_batches(size, batch, 0, 1)
    assert numbers == [number for number, _ in one_process]
    by_number = dict(item for shard in shards for item in shard)
    assert all(by_number[number] == batch_indices for number, batch_indices in one_process)


def test_image_set_fetches_whole_batches():
    images = torch.arange(5 * 4, dtype=torch.uint8).view(5, 1, 2, 2)
    dataset = ImageSet(images, torch.arange(5))
    batch_images, batch_labels = dataset.__getitems__([4, 0, 2])
    assert torch.equal(batch_images, images[[4, 0, 2]])
    assert batch_labels.tolist() == [4, 0, 2]


def test_normalizer_matches_torchvision_to_tensor_then_normalize():
    from torchvision.transforms import functional

    info = DatasetInfo("x", 3, 4, 4, 10, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), tuple("0123456789"))
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = functional.normalize(images.float() / 255, info.mean, info.std)
    torch.testing.assert_close(Normalizer(info, torch.device("cpu"))(images), expected)


def test_accumulation_groups_keep_every_batch_in_order():
    assert list(accumulation_groups(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(accumulation_groups(range(2), 1)) == [[0], [1]]


def test_resident_and_dataloader_paths_yield_the_same_batches():
    images = torch.randint(0, 256, (103, 1, 4, 4), dtype=torch.uint8)
    dataset = ImageSet(images, torch.arange(103) % 10)
    cpu = torch.device("cpu")
    for rank in range(2):
        resident, classic = (kind(dataset, 16, cpu, rank, 2, 5) for kind in (ResidentBatches, DataLoaderBatches))
        for loader in (resident, classic):
            loader.set_epoch(3)
        assert len(resident) == len(classic) == 4  # 52 samples per rank: 3 full batches and 4
        batches = list(zip(resident, classic))
        assert len(batches) == 4
        for (a_images, a_labels), (b_images, b_labels) in batches:
            assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
        indices = train_indices(train_sampler(dataset, rank, 2, seed=5), epoch=3)
        assert torch.equal(batches[0][0][1], dataset.labels[indices[:16]])  # the sampler's order


def test_a_resumed_epoch_skips_the_batches_already_trained():
    dataset = ImageSet(torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8), torch.arange(100) % 10)
    loader = ResidentBatches(dataset, 16, torch.device("cpu"), 0, 1, 1)
    loader.set_epoch(2)
    whole = [labels for _, labels in loader]
    loader.set_epoch(2, skip_batches=4)
    assert len(loader) == len(whole) - 4 == 3 and loader.batches_per_epoch == 7
    assert all(torch.equal(a, b) for a, b in zip(whole[4:], (labels for _, labels in loader)))
