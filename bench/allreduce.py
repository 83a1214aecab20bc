"""What one gradient synchronization costs: collectives on the sizes of this project's models.

    .venv/bin/torchrun --standalone --nproc_per_node 2 bench/allreduce.py [--out bench/results/allreduce.json]

For each model's gradient (its parameter count in float32), the median time of an all_reduce
(what DDP runs once per step), a broadcast and an all_gather, over interleaved repeats. Runs on
gloo (CPU) or NCCL (GPUs, one per process). Compare with the step times in bench/overhead.py.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import collective_microseconds, machine, write_results  # noqa: E402
from mnist_dist.data.datasets import INFO  # noqa: E402
from mnist_dist.models import build_model  # noqa: E402

REPEATS, CALLS = 20, 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet", "cnn", "mlp"])
    parser.add_argument("--out", default="bench/results/allreduce.json")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda") if cuda else torch.device("cpu")
    world_size, rank = dist.get_world_size(), dist.get_rank()
    results = {"machine": machine(), "backend": dist.get_backend(), "world_size": world_size, "models": {}}
    if rank == 0:
        print(f"{dist.get_backend()}, {world_size} processes; microseconds per call (median)")
        print(f"{'model':<6} {'floats':>9} {'all_reduce':>11} {'broadcast':>10} {'all_gather':>11}")
    for name in args.models:
        size = sum(p.numel() for p in build_model(name, INFO["fashion-mnist"]).parameters())
        tensor = torch.zeros(size, device=device)  # zeros stay zeros however often they are summed
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        calls = {  # default arguments bind this model's tensors
            "all_reduce": lambda tensor=tensor: dist.all_reduce(tensor),
            "broadcast": lambda tensor=tensor: dist.broadcast(tensor, src=0),
            "all_gather": lambda tensor=tensor, gathered=gathered: dist.all_gather(gathered, tensor),
        }
        synchronize = torch.cuda.synchronize if cuda else lambda: None
        row = {"floats": size, **collective_microseconds(calls, REPEATS, CALLS, dist.barrier, synchronize)}
        results["models"][name] = row
        if rank == 0:
            timings = f"{row['all_reduce_us']:>11,.0f} {row['broadcast_us']:>10,.0f} {row['all_gather_us']:>11,.0f}"
            print(f"{name:<6} {size:>9,} {timings}")
    if rank == 0:
        write_results(results, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
