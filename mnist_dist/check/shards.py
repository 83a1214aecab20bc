"""The training shards: every rank trains on its own part of one and the same training split, the parts
together covering it, each sample on one rank but for the few that the sampler repeats so that every
rank takes as many steps (data/sharding.py). Read from the real loader, after its `set_epoch(0)`.
"""

import hashlib
from collections import Counter

from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.check.report import Row
from mnist_dist.data.images import ImageSet
from mnist_dist.data.loaders import TrainBatches

SAME_SHARDING = "every rank must shard with the same world size and --seed (data/sharding.py)"


def split_digest(dataset: ImageSet) -> str:
    """The first 12 hex digits of the sha256 of the split's images and labels: equal on every rank that
    read the same files (MNIST's 54,000 training images: 42 MB, about 0.1 s)."""
    digest = hashlib.sha256()
    digest.update(dataset.images.contiguous().numpy())
    digest.update(dataset.labels.contiguous().numpy())
    return digest.hexdigest()[:12]


def shard_problem(parts: list[list[int]], digests: list[str], size: int) -> str:
    """Why the shards are wrong, with the fix; "" when they are right."""
    differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if differ:
        return (
            f"ranks {differ} read another training split than rank 0 (sha256 {digests[differ[0]]} against "
            f"{digests[0]}): point every node's --data-dir at the same dataset files"
        )
    counts = sorted({len(part) for part in parts})
    if len(counts) > 1:
        return f"the ranks hold {counts} samples: unequal shards leave ranks waiting at an epoch's end; {SAME_SHARDING}"
    seen = Counter(index for part in parts for index in part)
    missing = size - sum(1 for index in seen if 0 <= index < size)
    outside = sum(1 for index in seen if not 0 <= index < size)
    padding = len(parts) * counts[0] - size  # what DistributedSampler repeats to make the shards equal
    repeated = sum(count - 1 for count in seen.values())
    if missing or outside or repeated != padding:
        return (
            f"{missing:,} of the {size:,} training samples are on no rank, {outside:,} indices are outside the split, "
            f"{repeated:,} samples are repeated where the sampler pads {padding:,}; {SAME_SHARDING}"
        )
    return ""


def shard_rows(loader: TrainBatches, dataset: ImageSet, name: str, accelerator: Accelerator) -> list[Row]:
    """One row: the shards of epoch 0 over all ranks (one gather of every rank's indices and digest)."""
    loader.set_epoch(0)
    gathered = gather_object([(list(loader.indices), split_digest(dataset))])
    parts, digests = [part for part, _ in gathered], [digest for _, digest in gathered]
    size, processes = len(dataset), len(parts)
    why = shard_problem(parts, digests, size)
    padding = processes * len(parts[0]) - size
    spread = (
        f"each on one rank but {padding} on two (the sampler's padding: equal steps)" if padding else "each on one rank"
    )
    result = (
        f"{size:,} samples over {processes} ranks, {len(parts[0]):,} a rank, {spread}; "
        f"the same split on every rank (sha256 {digests[0]})"
    )
    if why:
        result = f"{size:,} samples over {processes} ranks, {[len(part) for part in parts]} each"
    values = {"samples": size, "per_rank": [len(part) for part in parts], "padding": padding, "sha256": digests}
    return [Row("shards", f"{name} train", result, ok=not why, why=why, values=values)]
