"""Model FLOPs utilization of every model's training step, side by side, against the device's matmul
peak measured in the same run.

    .venv/bin/python bench/mfu.py [--rounds 10] [--out bench/results/mfu.json]
    python bench/mfu.py --device cuda --out bench/results/gpu-mfu.json        # bf16, as the trainer on a GPU

Per model: FLOPs per training sample (forward + backward, FlopCounterMode: train/flops.py, what a run
reports), samples/s of forward + backward + optimizer step on one fixed batch of its dataset's shape
(bench/model_step.py's step and timing: round-robin bursts, medians; each model's recipe batch and
optimizer, channels_last as the trainer's default), achieved GFLOP/s = FLOPs per sample x samples/s,
and its share of the peak. glibc's malloc is tuned as `train.py` tunes it (mnist_dist/train/allocator.py).
The peak is train/peak.py's matmul measurement given PEAK_SECONDS, before
and after the models (the higher is the yardstick; the two show how steady the machine was), beside
the 0.3 s measurement a run makes once per machine.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.model_step import STEPS_PER_BURST, median_speeds, step_function  # noqa: E402
from bench.runs import machine, write_results  # noqa: E402
from mnist_dist.data.datasets import INFO  # noqa: E402
from mnist_dist.models import MODELS, build_model  # noqa: E402
from mnist_dist.recipes import recipe  # noqa: E402
from mnist_dist.train.allocator import keep_freed_memory  # noqa: E402
from mnist_dist.train.flops import training_flops_per_sample  # noqa: E402
from mnist_dist.train.peak import MEASURE_SECONDS, matmul_dtype, matmul_peak, synchronize  # noqa: E402

PEAK_SECONDS = 3.0  # the yardstick's measurement: ten times a run's (MEASURE_SECONDS)
DATASETS = {"cifar-mlp": "cifar10"}  # the rest train on the 28x28 sets (Fashion-MNIST's shape)


def model_case(name: str) -> dict:
    """What the table says of a model before timing it: its dataset, recipe batch and optimizer, FLOPs."""
    dataset = DATASETS.get(name, "fashion-mnist")
    info = INFO[dataset]
    flops = training_flops_per_sample(build_model(name, info), (info.channels, info.height, info.width))
    options = recipe(name)
    return {
        "dataset": dataset,
        "batch": options["batch_size"],
        "optimizer": options["optimizer"],
        "train_flops_per_sample": flops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on cuda, float32 on cpu), bf16 or no")
    parser.add_argument("--out", default="bench/results/mfu.json")
    args = parser.parse_args()
    allocator_tuned = keep_freed_memory()  # as train.py does, before the models' tensors exist
    device = torch.device(args.device)
    precision = args.precision if args.precision != "auto" else "bf16" if device.type == "cuda" else "no"
    dtype = matmul_dtype(device.type, precision)
    autocast = dtype if dtype != torch.float32 else None
    name = machine() if device.type == "cpu" else torch.cuda.get_device_name(device)

    run_figure = matmul_peak(device, dtype)  # what a run measures once and caches
    before = matmul_peak(device, dtype, seconds=PEAK_SECONDS)
    cases = {model: model_case(model) for model in MODELS}
    steps = [
        step_function(model, case["batch"], True, case["optimizer"], "fused", case["dataset"], args.device, autocast)
        for model, case in cases.items()
    ]
    batches = [case["batch"] for case in cases.values()]
    speeds = median_speeds(steps, batches, args.rounds, lambda: synchronize(device))
    after = matmul_peak(device, dtype, seconds=PEAK_SECONDS)
    peak = max(before, after)

    dtype_name = str(dtype).removeprefix("torch.")
    print(
        f"{name}, torch {torch.__version__}, threads {torch.get_num_threads()}, {dtype_name}, "
        f"malloc {'tuned' if allocator_tuned else 'defaults'}"
    )
    print(
        f"peak: {dtype_name} matmul, best over {PEAK_SECONDS:g} s: {before / 1e9:,.1f} GFLOP/s before the models, "
        f"{after / 1e9:,.1f} after; a run's {MEASURE_SECONDS:g} s measurement: {run_figure / 1e9:,.1f}"
    )
    print(f"steps: median of {args.rounds} rounds of {STEPS_PER_BURST}; % of the peak {peak / 1e9:,.1f} GFLOP/s")
    header = f"{'model':<12}{'dataset':<14}{'batch':>6} {'optim':<5}{'MFLOP/sample':>13}{'samples/s':>11}"
    print(f"{header}{'GFLOP/s':>9}{'MFU':>7}")
    for (model, case), speed in zip(cases.items(), speeds):
        achieved = case["train_flops_per_sample"] * speed
        case |= {"samples_per_second": speed, "achieved_flops_per_second": achieved, "mfu": achieved / peak}
        print(
            f"{model:<12}{case['dataset']:<14}{case['batch']:>6} {case['optimizer']:<5}"
            f"{case['train_flops_per_sample'] / 1e6:>13.3f}{speed:>11,.0f}{achieved / 1e9:>9.1f}{case['mfu']:>7.1%}"
        )
    peaks = {"before": before, "after": after, "run_measurement": run_figure, "yardstick": peak}
    results = {"machine": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": dtype_name}
    results["allocator_tuned"] = allocator_tuned
    results |= {"rounds": args.rounds, "peak_flops_per_second": peaks, "models": cases}
    write_results(results, args.out)


if __name__ == "__main__":
    main()
