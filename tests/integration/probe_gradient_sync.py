"""Run under torchrun by test_distributed.py: the trainer's DDP set-up against DDP's defaults.

Each rank feeds its own two random batches to two DDP copies of the BatchNorm cnn: one set up by
`configure_ddp` (on gloo: gather_average_hook, no buffer broadcast before each forward), one with
DDP's defaults (all_reduce, broadcast), and to a plain local copy. Writes <out>/rank<r>.pt with the
DDP copies' gradients (summed over both backward passes) and all three copies' BatchNorm buffers.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_dist.config import make_config
from mnist_dist.data.datasets import INFO
from mnist_dist.distributed import build_accelerator, configure_ddp
from mnist_dist.models import build_model
from mnist_dist.train.job import leave_group


def main(out: Path) -> None:
    accelerator = build_accelerator(make_config({"seed": 3}))
    rank = accelerator.process_index
    models = {}
    for name in ("configured", "default", "local"):
        torch.manual_seed(0)
        model = build_model("cnn", INFO["mnist"])
        models[name] = model if name == "local" else torch.nn.parallel.DistributedDataParallel(model)
    configure_ddp(models["configured"])
    generator = torch.Generator().manual_seed(100 + rank)  # different batches on each rank
    batches = [
        (torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator))
        for _ in range(2)
    ]
    report = {}
    for name, model in models.items():
        for images, labels in batches:
            F.cross_entropy(model(images), labels).backward()
        module = model if name == "local" else model.module
        report[name] = {key: param.grad.clone() for key, param in module.named_parameters()}
        report[f"{name} buffers"] = {key: value.clone() for key, value in module.named_buffers()}
    torch.save(report, out / f"rank{rank}.pt")
    accelerator.wait_for_everyone()
    # The DDP models hold the process group: let go of them first (see probe_sharding.py).
    del models, model
    leave_group(accelerator)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
