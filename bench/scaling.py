"""1 process with N threads vs N gloo processes with 1 thread each, on the same CPU cores.

    .venv/bin/python bench/scaling.py [--processes 2] [--epochs 2] [--out bench/results/scaling.json]

Training images/s (the median of the epochs) for LeNet and the default CNN on Fashion-MNIST with the
same global batch (per-process batch divided by the processes). On a GPU machine, pass
--gpus to compare 1..N GPUs instead.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import machine, run_train, write_results  # noqa: E402

MODELS = {"lenet": 100, "cnn": 256}  # model: global batch


def images_per_second(rows: list[dict]) -> float:
    return statistics.median(row["samples_per_second"] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--gpus", action="store_true", help="compare 1..N processes on N GPUs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/scaling.json")
    args = parser.parse_args()
    results = {"machine": machine(), "runs": []}
    counts = range(1, args.processes + 1) if args.gpus else (1, args.processes)
    for model, global_batch in MODELS.items():
        for processes in counts:
            threads = None if args.gpus else (args.processes if processes == 1 else 1)
            common = ["--model", model, "--dataset", "fashion-mnist", "--data-dir", args.data_dir, "--epochs", str(args.epochs),
                      "--batch-size", str(global_batch // processes), "--no-checkpoint-epochs"]  # fmt: skip
            if not args.gpus:
                common.append("--cpu")
            rows = run_train(common, processes=processes, threads=threads)["rows"]
            entry = {"model": model, "processes": processes, "threads_per_process": threads,
                     "images_per_second": images_per_second(rows)}  # fmt: skip
            results["runs"].append(entry)
            print(f"{model:<6} {processes} process(es) x {threads or 'default'} thread(s): {entry['images_per_second']:,.0f} images/s")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
