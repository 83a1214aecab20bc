"""What the gradient sync costs 2 CPU processes, in a plain DDP loop with no data pipeline.

    .venv/bin/python bench/ddp_sync.py [--model lenet] [--batch 100] [--repeats 3] [--out bench/results/ddp_sync.json]

Side by side, round-robin, median of the repeats, training images/s on one fixed batch:
  1 process x 2 threads, no DDP;
  2 processes x 1 thread, DDP with its default all_reduce;
  2 processes x 1 thread, DDP with mnist_dist's gather_average_hook (what the trainer uses on gloo);
  2 processes x 1 thread, DDP with a hook that skips the sync (the ceiling: compute alone).
Each 2-process variant takes half the batch per process (the same global batch).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import machine, train_command, write_results  # noqa: E402
from mnist_dist.data.datasets import INFO  # noqa: E402
from mnist_dist.distributed import gather_average_hook  # noqa: E402
from mnist_dist.models import build_model  # noqa: E402

VARIANTS = ("1 process", "all_reduce", "gather hook", "no sync")
WARMUP, STEPS = 30, 300


def skip_sync_hook(_, bucket) -> torch.futures.Future[torch.Tensor]:
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def worker(model_name: str, batch: int, variant: str) -> None:
    """One run of one variant; rank 0 prints its images/s."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = build_model(model_name, INFO["fashion-mnist"]).to(memory_format=torch.channels_last)
    if world_size > 1:
        torch.distributed.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
        if variant != "all_reduce":
            model.register_comm_hook(None, gather_average_hook if variant == "gather hook" else skip_sync_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, fused=True)
    images = torch.randn(batch // world_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch // world_size,))
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            if world_size > 1:
                torch.distributed.barrier()
            start = time.perf_counter()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if world_size > 1:
        torch.distributed.barrier()
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"images/s {STEPS * batch / seconds}")
    if world_size > 1:
        torch.distributed.destroy_process_group()


def run(model_name: str, batch: int, variant: str) -> float:
    processes = 1 if variant == "1 process" else 2
    command = train_command(
        ["--worker", variant, "--model", model_name, "--batch", str(batch)], processes, Path(__file__)
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // processes)}
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return float(next(line for line in output.splitlines() if line.startswith("images/s")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/ddp_sync.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args.model, args.batch, args.worker)
    speeds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            speeds[variant].append(run(args.model, args.batch, variant))
    results = {"machine": machine(), "model": args.model, "global_batch": args.batch, "variants": {}}
    for variant, values in speeds.items():
        results["variants"][variant] = {"images_per_second": statistics.median(values), "repeats": values}
        print(
            f"{args.model} batch {args.batch}, {variant:<12} {statistics.median(values):>9,.0f} images/s "
            f"(runs: {', '.join(f'{value:,.0f}' for value in values)})"
        )
    write_results(results, args.out)


if __name__ == "__main__":
    main()
