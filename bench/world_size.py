"""What a resume on another number of processes costs a model with BatchNorm: the cnn of
configs/fashion-92.yaml trained on 2 processes to the end, against the same run stopped (SIGTERM) after its
second epoch's checkpoint and resumed on 1 process (batch 256 x 2 -> 512 x 1, the global batch kept).

    .venv/bin/python bench/world_size.py [--seeds 0 1 2] [--out bench/results/world_size.json]

BatchNorm normalises over each process's batch: 256 samples per statistic on 2 processes, 512 on 1, so the
resumed run's last three epochs differ from the uninterrupted run's by more than float rounding. Prints the
test accuracy of both for each seed and the difference; docs/CHECKPOINTS.md quotes the figures.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import REPO, machine, train_command, write_results  # noqa: E402

CONFIG = ["--config", "configs/fashion-92.yaml", "--wandb", "disabled"]


def start(run_dir: Path, seed: int, processes: int) -> subprocess.Popen:
    """train.py on `processes` processes sharing the 2 cores (one thread each on 2, two on 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // processes)}
    command = train_command([*CONFIG, "--seed", str(seed), "--run-dir", str(run_dir)], processes)
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, allowed: tuple[int, ...] = (0,)) -> None:
    _, stderr = process.communicate()
    if process.returncode not in allowed:
        raise RuntimeError(f"train.py exited {process.returncode}:\n{stderr[-2000:]}")


def stop_after_epochs(run_dir: Path, seed: int, epochs: int) -> None:
    """2 processes, SIGTERM to both once the checkpoint of epoch `epochs` is complete: they stop at once."""
    process = start(run_dir, seed, 2)
    while len(list((run_dir / "checkpoints").glob("step-*/COMPLETE"))) < epochs:
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before its checkpoint of epoch {epochs}")
        time.sleep(0.05)
    for child in psutil.Process(process.pid).children(recursive=True):
        child.send_signal(signal.SIGTERM)
    finished(process, allowed=(1, 3))  # torchrun reports its workers' exit 3 as 1


def test_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["test_accuracy"]


def one_seed(seed: int, folder: Path) -> dict:
    uninterrupted, resumed = folder / f"uninterrupted-{seed}", folder / f"resumed-{seed}"
    finished(start(uninterrupted, seed, 2))
    stop_after_epochs(resumed, seed, 2)
    finished(start(resumed, seed, 1))
    changes = json.loads((resumed / "summary.json").read_text())["world_size_changes"]
    row = {"seed": seed, "uninterrupted_2": test_accuracy(uninterrupted), "resumed_2_to_1": test_accuracy(resumed)}
    return {**row, "difference": row["resumed_2_to_1"] - row["uninterrupted_2"], "world_size_changes": changes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/results/world_size.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            rows.append(one_seed(seed, Path(folder)))
            print(json.dumps(rows[-1]), flush=True)
    mean = sum(row["difference"] for row in rows) / len(rows)
    largest = max(abs(row["difference"]) for row in rows)
    print(
        f"test accuracy, resumed 2 -> 1 minus uninterrupted: mean {100 * mean:+.2f} points, largest {100 * largest:.2f}"
    )
    write_results(
        {
            "machine": machine(),
            "config": "configs/fashion-92.yaml",
            "rows": rows,
            "mean_difference": mean,
            "largest_difference": largest,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
