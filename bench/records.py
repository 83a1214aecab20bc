"""The Fashion-MNIST records: each recipe's whole command, timed from launch to exit, over several seeds.

    .venv/bin/python bench/records.py [--seeds 5] [--configs ...] [--yardstick COMMIT] [--out FILE.json]

Each run is exactly what a user types, `python train.py --config configs/fashion-92.yaml --seed S`
(plus a temporary --run-dir and --wandb disabled): imports, data loading, training, the validation
split choosing the kept weights, and the kept weights' one test evaluation, all inside the wall time.
The accuracy is summary.json's test_accuracy, of the weights the run keeps; nothing is chosen on the
test split. Reported airbench-style: mean and standard deviation of the accuracy over the seeds, and
the median wall time. The runs go round-robin (seed 0 of every recipe, then seed 1, ...), so a slow
spell of this shared machine falls on all recipes alike. With `--yardstick COMMIT`, each recipe also runs
once as that commit has it (seed 0, after the middle seed): the same machine's speed for the code before.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import REPO, epoch_rows, machine, train_command, write_results  # noqa: E402

# config -> (the accuracy it must reach, the seconds it must fit in); None: the best the project reaches
RECIPES = {
    "configs/fashion-92.yaml": (0.92, 25.0),
    "configs/fashion-93.yaml": (0.93, 40.0),
    "configs/fashion-120s.yaml": (None, 120.0),
    "configs/fashion-94.yaml": (0.94, 300.0),
}


def run_recipe(config: str, seed: int, data_dir: str, tree: Path = REPO) -> dict:
    """One whole `python train.py --config ...` run of the code and configs in `tree` (this checkout, or a
    yardstick commit's): its wall seconds and its summary.json."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        data_dir = str(Path(REPO, data_dir))  # the same data for the yardstick's tree
        args = ["--config", config, "--seed", str(seed), "--data-dir", data_dir, "--run-dir", str(run_dir)]
        command = train_command([*args, "--wandb", "disabled"], script=tree / "train.py")
        started = time.perf_counter()
        process = subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.decode(errors='replace')[-2000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        epochs = epoch_rows(run_dir)
        return {
            "seed": seed,
            "wall_seconds": wall,
            "test_accuracy": summary["test_accuracy"],
            "epochs": len(epochs),
            # where the wall time went: training steps, the validation after each epoch, and the rest
            # (imports, data loading, checkpoints, the final test evaluation, saving)
            "train_seconds": sum(row["epoch_seconds"] for row in epochs),
            "val_seconds": sum(row.get("val_seconds", 0.0) for row in epochs),  # --val-every: some epochs only
        }


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A checkout of `commit` in a temporary folder (a git worktree), removed after."""
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), commit], cwd=REPO, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)


def report(config: str, runs: list[dict]) -> dict:
    accuracies = [run["test_accuracy"] for run in runs]
    times = [run["wall_seconds"] for run in runs]
    bar, limit = RECIPES[config]
    entry = {
        "config": config,
        "accuracy_bar": bar,
        "seconds_limit": limit,
        "runs": runs,
        "mean_accuracy": statistics.mean(accuracies),
        "std_accuracy": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
        "min_accuracy": min(accuracies),
        "median_seconds": statistics.median(times),
        "median_train_seconds": statistics.median(run["train_seconds"] for run in runs),
        "median_val_seconds": statistics.median(run["val_seconds"] for run in runs),
        "max_seconds": max(times),
    }
    entry["met"] = entry["median_seconds"] <= limit and (bar is None or entry["mean_accuracy"] >= bar)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--configs", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", default="bench/results/records.json")
    parser.add_argument(
        "--yardstick",
        metavar="COMMIT",
        help="also run each recipe as that commit has it (its code and config), seed 0, once, in the middle of the "
        "seeds: the machine's speed today, beside the figures",
    )
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {config: [] for config in args.configs}
    yardsticks: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(worktree(args.yardstick)) if args.yardstick else None
        for seed in range(args.seeds):
            for config in args.configs:
                run = run_recipe(config, seed, args.data_dir)
                runs[config].append(run)
                print(
                    f"{config:<28} seed {seed}: {run['test_accuracy']:.2%} in {run['wall_seconds']:.1f} s", flush=True
                )
                if tree and seed == args.seeds // 2 and (tree / config).is_file():
                    yardsticks[config] = {"commit": args.yardstick, **run_recipe(config, 0, args.data_dir, tree)}
                    print(f"{config:<28} at {args.yardstick}, seed 0: {yardsticks[config]['wall_seconds']:.1f} s")
    recipes = [report(c, r) | ({"yardstick": yardsticks[c]} if c in yardsticks else {}) for c, r in runs.items()]
    results = {"machine": machine(), "seeds": args.seeds, "recipes": recipes}
    for entry in results["recipes"]:
        print(
            f"{entry['config']:<28} {entry['mean_accuracy']:.2%} +- {entry['std_accuracy']:.2%} "
            f"(min {entry['min_accuracy']:.2%}), median {entry['median_seconds']:.1f} s "
            f"(max {entry['max_seconds']:.1f} s; training {entry['median_train_seconds']:.1f} s, validation "
            f"{entry['median_val_seconds']:.1f} s): {'met' if entry['met'] else 'NOT met'}"
        )
    write_results(results, args.out)


if __name__ == "__main__":
    main()
