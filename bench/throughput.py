"""Training and evaluation throughput, side by side in one run, on Fashion-MNIST:

  (a) the classic loop: torchvision's FashionMNIST with ToTensor + Normalize per image, a shuffling
      DataLoader, a plain PyTorch loop (forward, loss, backward, step);
  (b) this project's trainer, DataLoader path (--loader dataloader);
  (c) this project's trainer, resident path (--loader resident).

    .venv/bin/python bench/throughput.py [--epochs 3] [--models lenet mlp] [--out bench/results/throughput.json]

Figures are medians over the epochs (the first included: the trainer has no warm-up to hide).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import machine, run_train, write_results  # noqa: E402
from mnist_dist.data.datasets import INFO  # noqa: E402
from mnist_dist.data.formats import prepare_torchvision_files  # noqa: E402
from mnist_dist.models import build_model  # noqa: E402

RECIPES = {  # the classic recipes, the same for all three loops
    "lenet": {"batch_size": 100, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
    "mlp": {"batch_size": 64, "optimizer": "adam", "lr": 1e-3, "momentum": 0.0},
}


def classic_loop(model_name: str, epochs: int, data_dir: Path) -> dict:
    """What most tutorials do; timed the same way as the trainer (train and eval per epoch)."""
    recipe, info = RECIPES[model_name], INFO["fashion-mnist"]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    train_set = datasets.FashionMNIST(data_dir, train=True, transform=transform)
    test_set = datasets.FashionMNIST(data_dir, train=False, transform=transform)
    train_loader = DataLoader(train_set, batch_size=recipe["batch_size"], shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    torch.manual_seed(0)
    model = build_model(model_name, info)
    if recipe["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"])
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    rows = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for images, labels in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        train_seconds = time.perf_counter() - start
        model.eval()
        start, correct = time.perf_counter(), 0
        with torch.no_grad():
            for images, labels in test_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
        rows.append(
            {
                "epoch_seconds": train_seconds,
                "test_seconds": time.perf_counter() - start,
                "test_accuracy": correct / len(test_set),
            }
        )
    return summarize(rows, len(train_set), len(test_set))


def trainer(model_name: str, epochs: int, loader: str, data_dir: Path) -> dict:
    recipe = RECIPES[model_name]
    args = [
        "--model",
        model_name,
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(data_dir),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(recipe["batch_size"]),
        "--optimizer",
        recipe["optimizer"],
        "--lr",
        str(recipe["lr"]),
        "--momentum",
        str(recipe["momentum"]),
        "--no-nesterov",
        "--weight-decay",
        "0",
        "--schedule",
        "none",
        "--label-smoothing",
        "0",
        "--loader",
        loader,
        "--no-checkpoint-epochs",
    ]
    return summarize(run_train(args)["rows"], 60_000, 10_000)


def summarize(rows: list[dict], train_size: int, test_size: int) -> dict:
    return {
        "train_images_per_second": statistics.median(train_size / row["epoch_seconds"] for row in rows),
        "eval_images_per_second": statistics.median(test_size / row["test_seconds"] for row in rows),
        "epoch_seconds": statistics.median(row["epoch_seconds"] for row in rows),
        "test_accuracy": rows[-1]["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["lenet", "mlp"], choices=sorted(RECIPES))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/throughput.json")
    args = parser.parse_args()
    data_dir = prepare_torchvision_files("fashion-mnist", Path(args.data_dir), download=True)
    results = {
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epochs": args.epochs,
        "models": {},
    }
    columns = f"{'train img/s':>12} {'eval img/s':>11} {'epoch s':>8} {'test acc':>9} {'x classic':>10}"
    print(f"{'model':<6} {'loop':<22} {columns}")
    for model_name in args.models:
        loops = {
            "(a) classic": classic_loop(model_name, args.epochs, data_dir),
            "(b) trainer dataloader": trainer(model_name, args.epochs, "dataloader", data_dir),
            "(c) trainer resident": trainer(model_name, args.epochs, "resident", data_dir),
        }
        baseline = loops["(a) classic"]["train_images_per_second"]
        for name, figures in loops.items():
            figures["ratio_to_classic"] = figures["train_images_per_second"] / baseline
            print(
                f"{model_name:<6} {name:<22} {figures['train_images_per_second']:>12,.0f} "
                f"{figures['eval_images_per_second']:>11,.0f} {figures['epoch_seconds']:>8.1f} "
                f"{figures['test_accuracy']:>9.2%} {figures['ratio_to_classic']:>9.1f}x"
            )
        results["models"][model_name] = loops
    write_results(results, args.out)


if __name__ == "__main__":
    main()
