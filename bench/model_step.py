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


def step_function(model_name: str, batch: int, channels_last: bool, optimizer: str, implementation: str):
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_name, INFO["fashion-mnist"]).to(memory_format=layout)
    speed = IMPLEMENTATIONS[implementation]
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **speed)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **speed)
    images = torch.randn(batch, 1, 28, 28).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    steps = [step_function(*case) for case in CASES]
    for step in steps:  # warm-up
        for _ in range(STEPS_PER_BURST):
            step()
    speeds: list[list[float]] = [[] for _ in CASES]
    for _ in range(args.rounds):
        for case, step, results in zip(CASES, steps, speeds):
            start = time.perf_counter()
            for _ in range(STEPS_PER_BURST):
                step()
            results.append(STEPS_PER_BURST * case[1] / (time.perf_counter() - start))
    print(f"threads: {torch.get_num_threads()}, median of {args.rounds} rounds of {STEPS_PER_BURST} steps")
    for (model_name, batch, channels_last, optimizer, implementation), results in zip(CASES, speeds):
        layout = "channels_last" if channels_last else "NCHW"
        variant = f"{model_name:<6} batch {batch:<4} {layout:<14} {optimizer:<4} {implementation:<8}"
        print(f"{variant} {statistics.median(results):>9,.0f} images/s")


if __name__ == "__main__":
    main()
