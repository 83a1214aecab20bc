"""The ceiling: forward + backward + optimizer step on one fixed batch, no data pipeline at all.

    .venv/bin/python bench/model_step.py

Compares memory layouts (NCHW vs channels_last) for the conv models and the single-tensor vs
multi-tensor (foreach) Adam for the MLP. What a trainer reaches beyond this is its own overhead.
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnist_dist.data.datasets import INFO  # noqa: E402
from mnist_dist.models import build_model  # noqa: E402

STEPS = 200


def images_per_second(model_name: str, batch: int, channels_last: bool, optimizer: str, foreach: bool) -> float:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_name, INFO["fashion-mnist"]).to(memory_format=layout)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=foreach)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=foreach)
    images = torch.randn(batch, 1, 28, 28).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,))
    for step in range(STEPS + 20):  # the first 20 warm up
        if step == 20:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    return STEPS * batch / (time.perf_counter() - start)


def main() -> None:
    cases = [("lenet", 100, False, "sgd", True), ("lenet", 100, True, "sgd", True), ("lenet", 256, False, "sgd", True),
             ("lenet", 256, True, "sgd", True), ("cnn", 256, False, "sgd", True), ("cnn", 256, True, "sgd", True),
             ("mlp", 64, False, "adam", False), ("mlp", 64, False, "adam", True)]  # fmt: skip
    print(f"threads: {torch.get_num_threads()}")
    for model_name, batch, channels_last, optimizer, foreach in cases:
        speed = images_per_second(model_name, batch, channels_last, optimizer, foreach)
        layout = "channels_last" if channels_last else "NCHW"
        print(f"{model_name:<6} batch {batch:<4} {layout:<14} {optimizer} foreach={foreach!s:<5} {speed:>9,.0f} images/s")


if __name__ == "__main__":
    main()
