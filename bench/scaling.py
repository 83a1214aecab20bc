"""1 process with N threads vs N gloo processes with 1 thread each, on the same CPU cores.

    .venv/bin/python bench/scaling.py [--processes 2] [--epochs 2] [--repeats 3] [--out bench/results/scaling.json]

Training images/s (the median of the epochs) for LeNet and the default CNN on Fashion-MNIST, the
processes run two ways: with the same global batch (each process takes batch / processes: the
same optimization, strong scaling) and with the same batch per process (what `torchrun` with an
unchanged config gives: a larger global batch, weak scaling). On a GPU machine, pass --gpus to
compare 1..N GPUs instead. The runs go round-robin, --repeats times, and each figure is the median
of its repeats, so that other jobs on a shared machine slow every variant alike.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import machine, run_train, write_results  # noqa: E402

MODELS = {"lenet": 100, "cnn": 256}  # model: batch of the 1-process run


def images_per_second(rows: list[dict]) -> float:
    return statistics.median(row["samples_per_second"] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--gpus", action="store_true", help="compare 1..N processes on N GPUs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/scaling.json")
    args = parser.parse_args()
    counts = range(1, args.processes + 1) if args.gpus else (1, args.processes)
    variants = []  # (model, processes, threads per process, batch per process)
    for model, batch in MODELS.items():
        for processes in counts:
            threads = None if args.gpus else (args.processes if processes == 1 else 1)
            for per_process in sorted({batch // processes, batch}) if processes > 1 else [batch]:
                variants.append((model, processes, threads, per_process))
    speeds: dict[tuple, list[float]] = {variant: [] for variant in variants}
    for _ in range(args.repeats):
        for variant in variants:
            model, processes, threads, per_process = variant
            common = [
                "--model",
                model,
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                args.data_dir,
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(per_process),
                "--no-checkpoint-epochs",
            ]
            if not args.gpus:
                common.append("--cpu")
            speeds[variant].append(images_per_second(run_train(common, processes=processes, threads=threads)["rows"]))
    results = {"machine": machine(), "repeats": args.repeats, "runs": []}
    one_process = {variant[0]: statistics.median(values) for variant, values in speeds.items() if variant[1] == 1}
    for (model, processes, threads, per_process), values in speeds.items():
        speed = statistics.median(values)
        entry = {
            "model": model,
            "processes": processes,
            "threads_per_process": threads,
            "batch_per_process": per_process,
            "global_batch": per_process * processes,
            "images_per_second": speed,
            "repeats": values,
            "ratio_to_one_process": speed / one_process[model],
        }
        results["runs"].append(entry)
        print(
            f"{model:<6} {processes} process(es) x {threads or 'default'} thread(s), batch {per_process} each: "
            f"{speed:,.0f} images/s (median of {len(values)}), {entry['ratio_to_one_process']:.2f}x 1 process"
        )
    write_results(results, args.out)


if __name__ == "__main__":
    main()
