"""The ceiling: forward + backward + optimizer step on one fixed batch, no data pipeline at all.

    .venv/bin/python bench/model_step.py [--rounds 20] > bench/results/model_step.txt

Compares memory layouts (NCHW vs channels_last) for the conv models, and torch's three optimizer
implementations (one op per tensor, multi-tensor foreach, fused) for SGD on LeNet and Adam on the
MLP. The cases run round-robin in bursts; each figure is the median over the rounds, so that other
jobs on a shared machine slow every case alike. What a trainer reaches beyond this is its own overhead.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnist_dist.data.datasets import INFO  # noqa: E402
from mnist_dist.models import build_model  # noqa: E402

STEPS_PER_BURST = 20
IMPLEMENTATIONS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
CASES = [  # model, batch, channels_last, optimizer, implementation
    ("lenet", 100, False, "sgd", "fused"),
    ("lenet", 100, True, "sgd", "fused"),
    ("lenet", 256, False, "sgd", "fused"),
    ("lenet", 256, True, "sgd", "fused"),
    ("cnn", 256, False, "sgd", "fused"),
    ("cnn", 256, True, "sgd", "fused"),
    ("lenet", 100, True, "sgd", "single"),
    ("lenet", 100, True, "sgd", "foreach"),
    ("mlp", 64, False, "adam", "single"),
    ("mlp", 64, False, "adam", "foreach"),
    ("mlp", 64, False, "adam", "fused"),
]


def step_function(
    model_name: str,
    batch: int,
    channels_last: bool,
    optimizer: str,
    implementation: str,
    dataset: str = "fashion-mnist",
    device: str = "cpu",
    autocast: torch.dtype | None = None,
):
    """One training step of `model_name` on a fixed batch of `dataset`'s shape, on `device`; `autocast`:
    the mixed precision's dtype (bf16 on a GPU, as the trainer's Accelerator runs it), None for float32."""
    torch.manual_seed(0)
    info = INFO[dataset]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_name, info).to(device, memory_format=layout)
    speed = IMPLEMENTATIONS[implementation]
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **speed)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **speed)
    images = torch.randn(batch, info.channels, info.height, info.width, device=device)
    images = images.contiguous(memory_format=layout)
    labels = torch.randint(0, info.num_classes, (batch,), device=device)
    precision = torch.autocast(torch.device(device).type, autocast) if autocast else nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with precision:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()

    return step


def median_speeds(
    steps: list[Callable[[], None]], batches: list[int], rounds: int, synchronize: Callable[[], None] = lambda: None
) -> list[float]:
    """Images/s of each step function (of `batches` images each): a warm-up burst each, then `rounds`
    rounds of a burst of each in turn; the median per step. `synchronize` waits for a GPU's queued work."""
    for step in steps:
        for _ in range(STEPS_PER_BURST):
            step()
    synchronize()
    speeds: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for step, batch, results in zip(steps, batches, speeds):
            start = time.perf_counter()
            for _ in range(STEPS_PER_BURST):
                step()
            synchronize()
            results.append(STEPS_PER_BURST * batch / (time.perf_counter() - start))
    return [statistics.median(results) for results in speeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    speeds = median_speeds([step_function(*case) for case in CASES], [case[1] for case in CASES], args.rounds)
    print(f"threads: {torch.get_num_threads()}, median of {args.rounds} rounds of {STEPS_PER_BURST} steps")
    for (model_name, batch, channels_last, optimizer, implementation), speed in zip(CASES, speeds):
        layout = "channels_last" if channels_last else "NCHW"
        variant = f"{model_name:<6} batch {batch:<4} {layout:<14} {optimizer:<4} {implementation:<8}"
        print(f"{variant} {speed:>9,.0f} images/s")


if __name__ == "__main__":
    main()
