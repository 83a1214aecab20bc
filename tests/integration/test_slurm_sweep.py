"""launch/slurm/sweep.sbatch on a real one-node SLURM (the `cluster` fixture, tests/integration/conftest.py):
a sweep as a job array, one point per task, each task preempted, requeued and resumed on its own.

A 3-point grid over lr trains as `--array=0-2`, submitted as written (the reference runs: 1 CPU a
task on the 2-CPU node, logs in slurm-logs/); then task 1 alone, submitted again into another folder,
is preempted with USR1, and again with USR2 (`SBATCH_SIGNAL=B:USR2@120` and `--stop-signals USR2`, for
clusters where NCCL or the container uses USR1): each must requeue that task under its own job id,
resume, and end with exactly the weights of the uninterrupted task 1.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, assert_same_weights, deterministic_args
from slurm_cluster import FINISHED, NEVER_STARTS, SlurmCluster

SWEEP = """
name: tiny
method: grid
metric: {name: val/accuracy, goal: maximize}
parameters:
  lr: {values: [0.02, 0.05, 0.1]}
"""
# As test_slurm.py: 240 steps of lenet, a checkpoint every 40, --deterministic; no W&B (its own tests).
ARGS = [*deterministic_args(240, "--checkpoint-every", "40"), "--wandb", "disabled"]


class Sweep:
    """One sbatch of sweep.sbatch: `--array=TASKS`, runs in folder/runs/<task>/, logs in folder/task-<i>.out;
    as_written: no sbatch option but --array, the logs where the script's #SBATCH --output puts them."""

    def __init__(
        self, cluster: SlurmCluster, folder: Path, data_dir: Path, tasks: str, extra=(), env=None, as_written=False
    ):
        self.cluster, self.folder = cluster, folder
        self.runs = folder / "runs"
        (folder / "tiny.yaml").write_text(SWEEP)
        command = ["launch/slurm/sweep.sbatch", folder / "tiny.yaml", *ARGS, "--data-dir", data_dir, *extra]
        options = [f"--array={tasks}"]
        if not as_written:
            options += ["--cpus-per-task=1", f"--output={folder}/task-%a.out"]
        environment = {"PYTHONUNBUFFERED": "1", "WANDB_API_KEY": "", "SWEEP_DIR": str(self.runs), **(env or {})}
        self.id = cluster.sbatch(command, options, cwd=REPO, env=environment)
        self.log_pattern = folder / "task-*.out"
        if as_written:
            self.log_pattern = REPO / "slurm-logs" / f"mnist-sweep-{self.id}_*.out"

    def tasks(self) -> dict[str, dict]:
        """scontrol's record of each task by task id ("0-2" while several are pending together)."""
        lines = self.cluster.command("scontrol", "show", "job", "-o", str(self.id)).splitlines()
        records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines if line.strip()]
        return {record["ArrayTaskId"]: record for record in records}

    def wait_until_completed(self, count: int, timeout: float = 150) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.tasks()
            if len(tasks) == count and all(task["JobState"] == "COMPLETED" for task in tasks.values()):
                return tasks
            # A requeued task passes through COMPLETING, REQUEUED and PENDING: only an end that is not
            # COMPLETED is a failure.
            failed = [task for task in tasks.values() if task["JobState"] in FINISHED - {"COMPLETED"}]
            # A request larger than the node pends for ever: say so now rather than at the deadline.
            failed += [
                task for task in tasks.values() if task["JobState"] == "PENDING" and task["Reason"] in NEVER_STARTS
            ]
            if failed or time.monotonic() > deadline:
                pytest.fail(f"tasks {tasks}\n{self.logs()}\n{self.cluster.logs()}")
            time.sleep(0.5)

    def wait_for_file(self, path: Path, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"{path} did not appear in {timeout} s:\n{self.logs()}")
            time.sleep(0.05)

    def log_files(self) -> list[Path]:
        return sorted(self.log_pattern.parent.glob(self.log_pattern.name))

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')}" for path in self.log_files())


@pytest.fixture(scope="module")
def reference(cluster, data_dir, tmp_path_factory) -> Sweep:
    """The uninterrupted sweep, submitted as written (1 CPU a task on the 2-CPU node, logs in slurm-logs/)."""
    sweep = Sweep(cluster, tmp_path_factory.mktemp("sweep"), data_dir, "0-2", as_written=True)
    try:
        sweep.wait_until_completed(3)
        yield sweep
    finally:
        for log in sweep.log_files():  # in the repository's slurm-logs/: leave it as it was
            log.unlink()


def summarize(folder: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mnist_dist.sweep", "summarize", str(folder), *options]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)


def test_a_three_task_array_trains_each_point_and_summarize_lists_them(reference):
    # As written, its logs in slurm-logs/ (git ignores them), one per task.
    assert [log.name for log in reference.log_files()] == [f"mnist-sweep-{reference.id}_{i}.out" for i in range(3)]
    listing = json.loads(summarize(reference.runs, "--json", "--plot", str(reference.runs / "sweep.png")).stdout)
    runs = listing["runs"]
    assert [run["status"] for run in runs] == ["finished"] * 3
    assert sorted(run["parameters"]["lr"] for run in runs) == [0.02, 0.05, 0.1]  # task i: point i of the grid
    assert {run["task"]: run["parameters"]["lr"] for run in runs} == {"0": 0.02, "1": 0.05, "2": 0.1}
    metrics = [run["metric"] for run in runs]
    assert all(0 < metric <= 1 for metric in metrics) and metrics == sorted(metrics, reverse=True)
    assert Path(listing["plot"]).stat().st_size > 0
    config = (reference.runs / "1" / "config.yaml").read_text()
    assert "wandb_group: tiny" in config and "run_name: tiny-1" in config
    table = summarize(reference.runs).stdout
    rows = [line for line in table.splitlines() if re.search(r"\b0\.(02|05|1)\b", line)]  # one per run, by its lr
    assert len(rows) == 3 and all("finished" in row for row in rows) and "val/accuracy" in table, table


@pytest.mark.parametrize("signal", ["USR1", "USR2"])
def test_the_stop_signal_to_one_task_requeues_that_task_and_it_resumes_to_identical_weights(
    cluster, reference, data_dir, tmp_path, signal
):
    # USR1: the scripts' default, to every process of the task (--full), as SLURM's preemption does.
    # USR2: chosen by one variable alone (SBATCH_SIGNAL: the scripts then give train.py --stop-signals),
    # sent to the batch shell only (as #SBATCH --signal=B:USR2@120 does), which must forward it.
    env, extra, target = {}, [], "--full"
    if signal == "USR2":
        env, target = {"SBATCH_SIGNAL": "B:USR2@120"}, "--batch"
    sweep = Sweep(cluster, tmp_path, data_dir, "1", extra, env)
    sweep.wait_for_file(sweep.runs / "1" / "checkpoints" / "step-000040" / "COMPLETE")
    cluster.command("scancel", f"--signal={signal}", target, f"{sweep.id}_1")
    task = sweep.wait_until_completed(1)["1"]
    log = sweep.logs()
    assert task["Restarts"] == "1", log
    assert re.search(rf"stopped by SIG{signal} after step \d+: checkpoint .* written", log), log
    assert f"requeueing job {task['JobId']}" in log and "resumed from" in log
    assert_same_weights(sweep.runs / "1", reference.runs / "1", "weights differ from the uninterrupted task")
