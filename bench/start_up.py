"""Start-up and exit with and without the garbage collector policy (mnist_dist/train/garbage.py), side by side.

    .venv/bin/python bench/start_up.py [--rounds 5] [--out bench/results/start_up.json]

Each round runs every workload twice, one run after the other: train.py as committed ("now"), and the same
command with the policy turned off ("collector on", Python's defaults: `imports_uncollected` a plain
context and `gc.freeze` doing nothing, patched in that process only). A figure is the median over the
rounds of: the whole process (launch to exit, timed from outside), summary.json's `time_split.start_up`
(process start to the first step), and "after the split", the whole process less the split's parts (the
run's last files, the console's summary, the interpreter's exit).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import REPO, machine, write_results  # noqa: E402

WORKLOADS = {
    "fashion-93, 1 epoch": ["--config", "configs/fashion-93.yaml", "--epochs", "1"],
    "lenet on digits, 20 steps (a test's run)": ["--model", "lenet", "--dataset", "digits", "--max-steps", "20"],
}
POLICY_OFF = (
    "import contextlib, gc, sys\n"
    "import mnist_dist.train.garbage as garbage\n"
    "garbage.imports_uncollected, gc.freeze = contextlib.nullcontext, lambda: None\n"
    "from mnist_dist.commands import train\n"
    "sys.exit(train(sys.argv[1:]))\n"
)
VARIANTS = {"now": [sys.executable, "train.py"], "collector on": [sys.executable, "-c", POLICY_OFF]}


def one_run(command: list[str], args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        flags = [*args, "--run-dir", str(run_dir), "--wandb", "disabled"]
        started = time.perf_counter()
        subprocess.run([*command, *flags], cwd=REPO, check=True, capture_output=True)
        wall = time.perf_counter() - started
        split = json.loads((run_dir / "summary.json").read_text())["time_split"]
    return {"wall": wall, "start_up": split["start_up"], "after_split": wall - sum(split.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench/results/start_up.json")
    args = parser.parse_args()
    runs = {(workload, variant): [] for workload in WORKLOADS for variant in VARIANTS}
    for round_number in range(args.rounds):
        for workload, flags in WORKLOADS.items():
            for variant, command in VARIANTS.items():
                runs[workload, variant].append(one_run(command, flags))
        print(f"round {round_number + 1}/{args.rounds} done", flush=True)
    cases = []
    for (workload, variant), measured in runs.items():
        medians = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
        cases.append({"workload": workload, "variant": variant, **medians, "runs": measured})
        print(
            f"{workload:<42} {variant:<13} whole {medians['wall']:.2f} s, start-up {medians['start_up']:.2f} s, "
            f"after the split {medians['after_split']:.2f} s"
        )
    write_results({"machine": machine(), "rounds": args.rounds, "cases": cases}, args.out)


if __name__ == "__main__":
    main()
