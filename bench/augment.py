"""--augment's cost per batch: the committed augmentation against an earlier commit's, side by side.

    .venv/bin/python bench/augment.py [--before 3369249] [--out bench/results/augment.json]

Both versions of mnist_dist/data/augment.py (the earlier one read with `git show`) augment the same uint8
batches with the same draws, and must give the same images, bit for bit. Each case alternates the two in
rounds (7 rounds of 50 calls each, 2 threads, as training does); a figure is the median round's
milliseconds per batch. The cases: each recipe's batch (Fashion-MNIST 512 and 256, digits 100, CIFAR-10
256) under the policies the datasets use (shift 0 + flips, 1 + flips, 2 without, 4 + flips).
"""

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.runs import machine, write_results  # noqa: E402
from mnist_dist.data import augment  # noqa: E402

BATCHES = {"fashion-mnist 512": (512, 1, 28), "fashion-mnist 256": (256, 1, 28), "digits 100": (100, 1, 28)}
BATCHES["cifar10 256"] = (256, 3, 32)
POLICIES = ((0, True), (1, True), (2, False), (4, True))  # (largest shift, flips)


def earlier_module(commit: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{commit}:mnist_dist/data/augment.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("augment_before")
    exec(compile(source, f"{commit}:mnist_dist/data/augment.py", "exec"), module.__dict__)
    return module


def milliseconds(versions: dict, images: torch.Tensor, shift: int, flip: bool, draws: torch.Tensor) -> dict:
    rounds = {name: [] for name in versions}
    for _ in range(7):
        for name, module in versions.items():
            started = time.perf_counter()
            for _ in range(50):
                module.random_shift(images, shift, flip, draws)
            rounds[name].append((time.perf_counter() - started) / 50 * 1e3)
    return {name: statistics.median(times) for name, times in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="3369249", help="the earlier commit to compare with")
    parser.add_argument("--out", default="bench/results/augment.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    versions = {"before": earlier_module(args.before), "now": augment}
    cases = []
    for batch, (n, channels, side) in BATCHES.items():
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=generator)
        draws = augment.sample_draws(torch.randperm(60_000, generator=generator)[:n], seed=0, epoch=3)
        for shift, flip in POLICIES:
            outputs = [module.random_shift(images, shift, flip, draws) for module in versions.values()]
            assert torch.equal(*outputs), f"{batch}, shift {shift}, flip {flip}: the versions' images differ"
            ms = milliseconds(versions, images, shift, flip, draws)
            cases.append({"batch": batch, "shift": shift, "flip": flip, **{f"{k}_ms": v for k, v in ms.items()}})
            cases[-1]["speedup"] = ms["before"] / ms["now"]
            print(
                f"{batch:<18} shift {shift} flip {flip!s:<5}: {ms['before']:.3f} -> {ms['now']:.3f} ms a batch "
                f"({cases[-1]['speedup']:.1f}x)",
                flush=True,
            )
    write_results({"machine": machine(), "before": args.before, "threads": 2, "cases": cases}, args.out)


if __name__ == "__main__":
    main()
