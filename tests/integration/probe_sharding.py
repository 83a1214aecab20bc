"""Run under torchrun by test_distributed.py: each rank reports what it trained on and evaluated.

Uses the real sharding, Accelerator and evaluation code on a small random dataset; writes
<out>/rank<r>.json.
"""

import json
import sys
from pathlib import Path

import torch

from mnist_dist.config import make_config
from mnist_dist.data.datasets import INFO
from mnist_dist.data.images import ImageSet, Normalizer
from mnist_dist.data.sharding import eval_shard, train_indices, train_sampler
from mnist_dist.distributed import build_accelerator
from mnist_dist.evaluate.exact import evaluate
from mnist_dist.models import build_model
from mnist_dist.train.job import leave_group

TRAIN_SIZE, TEST_SIZE, EVAL_BATCH = 1000, 1234, 100  # 13 eval batches, the last of 34 images


def main(out: Path) -> None:
    accelerator = build_accelerator(make_config({"seed": 7}))
    rank, world_size = accelerator.process_index, accelerator.num_processes
    generator = torch.Generator().manual_seed(0)  # the same data on every rank
    info = INFO["mnist"]
    train = ImageSet(
        torch.randint(0, 256, (TRAIN_SIZE, 1, 28, 28), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (TRAIN_SIZE,), generator=generator),
    )
    test = ImageSet(
        torch.randint(0, 256, (TEST_SIZE, 1, 28, 28), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (TEST_SIZE,), generator=generator),
    )
    sampler = train_sampler(train, rank, world_size, seed=7)
    torch.manual_seed(0)
    model = accelerator.prepare(build_model("lenet", info))
    result = evaluate(
        model, eval_shard(test, EVAL_BATCH, rank, world_size, 0), Normalizer(info, accelerator.device), accelerator
    )
    report = {
        "rank": rank,
        "world_size": world_size,
        "epochs": [train_indices(sampler, epoch) for epoch in range(2)],
        "eval": {"loss": result.loss, "accuracy": result.accuracy, "count": result.count},
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    accelerator.wait_for_everyone()  # no rank tears the group down while another still talks in it
    # The DDP model holds the process group: let go of it before the group goes, as a training job
    # does (train/job.leave_group); else gloo can abort at exit ("terminate called without an active
    # exception", seen when this probe ran beside another test).
    del model, result
    leave_group(accelerator)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
