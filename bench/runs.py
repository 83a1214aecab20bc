"""Shared by the benchmarks: run train.py as a user would and read what it wrote."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mnist_dist.tracking.metrics_log import read_metrics_log

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{os.cpu_count()} cores, {model}"


def train_command(args: list[str], processes: int = 1, script: Path = REPO / "train.py") -> list[str]:
    if processes == 1:
        return [sys.executable, str(script), *args]
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes), str(script), *args]


def run_train(args: list[str], processes: int = 1, threads: int | None = None, watch: tuple[float, ...] = ()) -> dict:
    """Run train.py to the end. Returns its epoch rows and, for each accuracy in `watch`, the
    whole-process seconds from launch until an epoch row at or above it appeared in metrics.jsonl.

    Time to accuracy is measured as published figures measure it (airbench, DAWNBench): on the test
    split after each epoch, so the runs hold out no validation split (--val-size 0) and evaluate every
    epoch (--val-every 1): each epoch row carries test_accuracy. A benchmark is not model selection:
    nothing is chosen on these numbers."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        flags = ["--val-size", "0", "--val-every", "1", "--run-dir", str(run_dir), "--wandb", "disabled"]
        command = train_command([*args, *flags], processes)
        started = time.perf_counter()
        errors = (Path(folder) / "stderr").open("w+")  # a file, not a pipe: a full pipe would block the run
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        reached: dict[float, float] = {}
        while process.poll() is None:
            for accuracy in watch:
                if accuracy not in reached and any(row["test_accuracy"] >= accuracy for row in epoch_rows(run_dir)):
                    reached[accuracy] = time.perf_counter() - started
            time.sleep(0.05)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{errors.read()[-2000:]}")
        rows = epoch_rows(run_dir)
        for accuracy in watch:  # reached in the last moments before exit
            if accuracy not in reached and any(row["test_accuracy"] >= accuracy for row in rows):
                reached[accuracy] = wall
        return {"rows": rows, "wall_seconds": wall, "reached": reached}


def epoch_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_metrics_log(path)[1] if path.exists() else []  # tolerates a line still being written


def write_results(results: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def collective_microseconds(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    per_repeat: int,
    barrier: Callable[[], None],
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Microseconds per call of each collective in `calls` ("<name>_us"), the median of `repeats` rounds of
    `per_repeat` calls after a warm-up round; every round starts together (`barrier`) and ends once the
    device has done its work (`synchronize`: a GPU's queue)."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(repeats + 1):  # the first is a warm-up
        for name, call in calls.items():
            barrier()
            start = time.perf_counter()
            for _ in range(per_repeat):
                call()
            synchronize()
            if repeat:
                seconds[name].append((time.perf_counter() - start) / per_repeat)
    return {f"{name}_us": statistics.median(values) * 1e6 for name, values in seconds.items()}
