"""The trainer's optimizer step against the bare model step, in one process, interleaved.

    .venv/bin/python bench/overhead.py [--models mlp lenet cnn] [--rounds 30] [--augment]
        [--out bench/results/overhead.json]

"bare": forward, loss, backward and optimizer step on batches already normalized on the device,
the least any loop can do for that model and optimizer. "trainer": `Trainer.train_step` on the
resident loader's batches (gather, normalize, the step, the epoch's loss and accuracy sums, the
schedule; with --augment also the per-sample shifts). Both build the same model and optimizer from one Config.
Bursts of each alternate so that other jobs on a shared machine slow both alike; the share of the
trainer's step time outside the model step is 1 - bare / trainer. Runs on the CPU or one GPU
(with bf16; on a GPU that falls back to fp16, the bare loop would lack the trainer's gradient scaler).
"""

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import machine, write_results  # noqa: E402
from mnist_dist.config import make_config  # noqa: E402
from mnist_dist.data.datasets import load_dataset  # noqa: E402
from mnist_dist.distributed import build_accelerator  # noqa: E402
from mnist_dist.models import build_model  # noqa: E402
from mnist_dist.train.build import build_trainer  # noqa: E402
from mnist_dist.train.optim import build_optimizer  # noqa: E402
from mnist_dist.train.signals import StopRequest  # noqa: E402

RECIPES = {  # the throughput benchmark's classic recipes, and the default cnn recipe
    "mlp": {"batch_size": 64, "optimizer": "adam", "lr": 1e-3, "schedule": "none"},
    "lenet": {
        "batch_size": 100,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": False,
        "schedule": "none",
    },
    "cnn": {"batch_size": 256},
}
STEPS_PER_BURST = 20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader):
    """The loader's batches, epoch after epoch."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def measure(model_name: str, rounds: int, data_dir: str, augment: bool = False) -> dict:
    config = make_config(
        {
            "model": model_name,
            "dataset": "fashion-mnist",
            "data_dir": data_dir,
            "loader": "resident",
            "wandb": "disabled",
            "dry_run": True,  # writes no run directory
            "augment": augment,
            "epochs": 50,
            **RECIPES[model_name],
        }
    )
    accelerator = build_accelerator(config)
    data = load_dataset(config.dataset, config.data_dir, config.data_file, download=True)
    trainer = build_trainer(config, accelerator, data, {}, {}, StopRequest())
    device, batch = accelerator.device, config.batch_size

    # The bare loop: its own copy of the model and optimizer, fed pre-normalized batches.
    model = build_model(model_name, data.info).to(device, memory_format=trainer.memory_format).train()
    optimizer = build_optimizer(config, model, device, accelerator.mixed_precision)
    images = [
        trainer.normalize(data.train.images[i : i + batch].to(device)).contiguous(memory_format=trainer.memory_format)
        for i in range(0, 50 * batch, batch)
    ]
    labels = [data.train.labels[i : i + batch].to(device) for i in range(0, 50 * batch, batch)]

    def bare_burst(start: int) -> None:
        for k in range(start, start + STEPS_PER_BURST):
            with accelerator.autocast():
                loss = F.cross_entropy(model(images[k % 50]), labels[k % 50], label_smoothing=config.label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    trainer.model.train()
    batches = endless(trainer.loader)

    def trainer_burst(_: int) -> None:
        for _ in range(STEPS_PER_BURST):
            trainer.train_step([next(batches)])

    seconds = {"bare": [], "trainer": []}
    for burst in (bare_burst, trainer_burst):  # warm-up
        burst(0)
    for round_ in range(rounds):
        for name, burst in (("bare", bare_burst), ("trainer", trainer_burst)):
            sync(device)
            start = time.perf_counter()
            burst(round_ * STEPS_PER_BURST)
            sync(device)
            seconds[name].append((time.perf_counter() - start) / STEPS_PER_BURST)
    bare, full = statistics.median(seconds["bare"]), statistics.median(seconds["trainer"])
    trainer.close()
    return {
        "batch_size": batch,
        "device": str(device),
        "bare_ms_per_step": bare * 1e3,
        "trainer_ms_per_step": full * 1e3,
        "bare_images_per_second": batch / bare,
        "trainer_images_per_second": batch / full,
        "share_outside_model_step": 1 - bare / full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet", "cnn"], choices=sorted(RECIPES))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--augment", action="store_true", help="the trainer's loader augments (the bare loop does not)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/overhead.json")
    args = parser.parse_args()
    results = {"machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(), "models": {}}
    results["augment"] = args.augment
    print(f"{'model':<6} {'batch':>5} {'bare ms':>8} {'trainer ms':>10} ", end="")
    print(f"{'bare img/s':>11} {'trainer img/s':>13} {'outside':>8}")
    for model_name in args.models:
        row = results["models"][model_name] = measure(model_name, args.rounds, args.data_dir, args.augment)
        print(
            f"{model_name:<6} {row['batch_size']:>5} {row['bare_ms_per_step']:>8.2f} "
            f"{row['trainer_ms_per_step']:>10.2f} "
            f"{row['bare_images_per_second']:>11,.0f} {row['trainer_images_per_second']:>13,.0f} "
            f"{row['share_outside_model_step']:>8.0%}"
        )
    write_results(results, args.out)


if __name__ == "__main__":
    main()
