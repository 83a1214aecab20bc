"""Whole-process wall time, from launch until an epoch's test accuracy reaches a bar.

    .venv/bin/python bench/time_to_accuracy.py [--repeats 3] [--out bench/results/time_to_accuracy.json]

Runs `python train.py` exactly as a user would (imports, data loading and evaluation included)
and watches its metrics.jsonl. Fashion-MNIST bars: 90% and 91%; MNIST 99% when MNIST's files are
under --data-dir. Median of the repeats (each with its own seed).

The Fashion-MNIST records (configs/fashion-92.yaml, fashion-93.yaml, fashion-120s.yaml) are timed by
bench/records.py instead: their whole command, validation split and final test evaluation included.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import machine, run_train, write_results  # noqa: E402

RECIPES = {
    "default (configs/cnn.yaml)": ["--config", "configs/cnn.yaml"],
    "classic lenet (configs/lenet.yaml)": ["--config", "configs/lenet.yaml"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--lenet-epochs", type=int, default=10, help="epochs for the classic recipe (its own is 10)")
    parser.add_argument("--out", default="bench/results/time_to_accuracy.json")
    args = parser.parse_args()
    datasets = {"fashion-mnist": (0.90, 0.91)}
    if (Path(args.data_dir) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        datasets["mnist"] = (0.99,)
    results = {"machine": machine(), "repeats": args.repeats, "runs": []}
    for dataset, bars in datasets.items():
        for recipe in args.recipes:
            extra = ["--epochs", str(args.lenet_epochs)] if "lenet" in recipe else []
            runs = [
                run_train(
                    [*RECIPES[recipe], *extra, "--dataset", dataset, "--data-dir", args.data_dir, "--seed", str(seed)],
                    watch=bars,
                )
                for seed in range(args.repeats)
            ]
            for bar in bars:
                times = [run["reached"].get(bar) for run in runs]
                reached = [t for t in times if t is not None]
                entry = {
                    "dataset": dataset,
                    "recipe": recipe,
                    "accuracy": bar,
                    "seconds": times,
                    "median_seconds": statistics.median(reached) if len(reached) == len(runs) else None,
                    "final_accuracies": [run["rows"][-1]["test_accuracy"] for run in runs],
                    "total_wall_seconds": [run["wall_seconds"] for run in runs],
                }
                results["runs"].append(entry)
                shown = (
                    f"{entry['median_seconds']:.1f} s"
                    if entry["median_seconds"] is not None
                    else f"not reached by all ({times})"
                )
                print(f"{dataset:<14} {recipe:<36} {bar:.0%}: {shown}   final {entry['final_accuracies']}")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
