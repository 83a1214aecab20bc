"""A run directory belongs to one job at a time, and a job that is refused or fails leaves it as it was."""

import json
import shutil
import socket
import subprocess
import sys
import time

import psutil
from helpers import LENET_FIVE_STEPS, assert_clean_error, metrics_rows, run_script, start_script, wait_for

from mnist_dist.checkpoint.run_lock import LOCK_FILE


def lenet_args(data_dir, run_dir, *extra) -> list:
    return ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", "--model", "lenet", *extra]


def test_a_second_job_on_the_same_run_directory_is_refused_and_touches_nothing(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = lenet_args(data_dir, run_dir, "--max-steps", "60", "--checkpoint-every", "20", "--log-every", "10")
    first = start_script("train.py", args)
    wait_for(run_dir / "metrics.jsonl", first)  # the first job holds the lock and trains
    # Paused (SIGSTOP) while the second job starts: alive and holding the lock, it cannot end first however
    # slowly the second starts, and it writes on from where it was once it goes on.
    paused = psutil.Process(first.pid)
    paused.suspend()
    try:
        config = (run_dir / "config.yaml").read_bytes()
        second = run_script("train.py", args)
    finally:
        paused.resume()
    assert_clean_error(second, f"run directory {run_dir} is in use by process {first.pid}")
    assert (run_dir / "config.yaml").read_bytes() == config
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    steps = [row["step"] for row in metrics_rows(run_dir) if row["type"] == "step"]
    assert steps == list(range(10, steps[-1] + 1, 10))  # every logged step once, in order
    assert not (run_dir / LOCK_FILE).exists()  # released at the end
    again = run_script("train.py", args)  # its final checkpoint loads, and says the run is finished
    assert again.returncode == 0 and "has finished (step" in again.stdout, again.stderr[-3000:]


def test_a_lock_whose_process_has_ended_is_taken_over_with_one_warning(data_dir, tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    facts = {"host": socket.gethostname(), "pid": int(ended.stdout), "heartbeat": time.time()}
    (run_dir / LOCK_FILE).write_text(json.dumps(facts))
    result = run_script("train.py", lenet_args(data_dir, run_dir, "--max-steps", "5"))
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: taking over the lock")]
    assert len(warnings) == 1 and f"its process {facts['pid']}" in warnings[0]
    assert not (run_dir / LOCK_FILE).exists()


def test_a_refused_rerun_and_a_failed_start_change_nothing(lenet_five_steps, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_five_steps, run_dir)
    written = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    refused = run_script("train.py", lenet_args(data_dir, run_dir, "--max-steps", "5", "--batch-size", "32"))
    assert_clean_error(refused, "was written with a global batch of")
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == written
    new_dir = tmp_path / "new" / "run"
    no_data = ["--dataset", "mnist", "--no-download", "--data-dir", tmp_path / "no-data"]
    failed = run_script("train.py", [*no_data, "--run-dir", new_dir, "--wandb", "disabled"])
    assert_clean_error(failed, "dataset files not found")
    assert not (tmp_path / "new").exists()  # neither the run folder nor the folder above it


def test_a_finished_run_run_again_says_so_and_rewrites_nothing(lenet_five_steps, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_five_steps, run_dir)  # trained with these options
    args = lenet_args(data_dir, run_dir, *LENET_FIVE_STEPS)
    files = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()}
    again = run_script("train.py", args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run {run_dir} has finished (step 5, epoch 0): nothing to do" in again.stdout
    assert "resumed from" not in again.stdout
    assert {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()
    } == files
    further_args = lenet_args(data_dir, run_dir, "--max-steps", "8", "--schedule", "none")
    further = run_script("train.py", further_args)
    assert further.returncode == 0 and "resumed from" in further.stdout, further.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8

    # SIGKILLed between its final files: the new weights written, summary.json still step 5's, its .tmp behind.
    (run_dir / "summary.json").write_bytes(files[run_dir / "summary.json"][0])
    (run_dir / "summary.json.tmp").write_text('{"test_accura')
    repaired = run_script("train.py", further_args)
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert f"run {run_dir} trained to step 8 but has summary.json of step 5: writing its final files" in repaired.stdout
    rewritten = json.loads((run_dir / "summary.json").read_text())
    assert {key: rewritten[key] for key in ("steps", "test_accuracy", "kept_step")} == {
        key: summary[key] for key in ("steps", "test_accuracy", "kept_step")
    }
    assert not (run_dir / "summary.json.tmp").exists()
    again = run_script("train.py", further_args)
    assert f"run {run_dir} has finished (step 8, epoch 0): nothing to do" in again.stdout, again.stderr[-3000:]


def test_a_trained_run_whose_checkpoints_are_gone_refuses_and_changes_nothing(lenet_five_steps, data_dir, tmp_path):
    """A purged scratch or an unmounted checkpoints/ (a dangling link): no silent start from step 0 over the
    run's records."""
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_five_steps, run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").symlink_to(tmp_path / "scratch" / "checkpoints")
    files = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()}
    result = run_script("train.py", lenet_args(data_dir, run_dir, *LENET_FIVE_STEPS))
    assert_clean_error(
        result,
        f"run folder {run_dir} has trained before (model.safetensors, last.safetensors, summary.json, checkpoints/ "
        f"is a link to {tmp_path / 'scratch' / 'checkpoints'}, which does not exist)",
        "Restore its checkpoints/, or start over with --resume none",
    )
    assert {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.rglob("*") if path.is_file()
    } == files
    assert not (run_dir / LOCK_FILE).exists()


def test_a_onecycle_run_cannot_be_trained_further(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    onecycle = ["--schedule", "onecycle"]  # lenet's recipe has a constant lr
    assert run_script("train.py", lenet_args(data_dir, run_dir, "--max-steps", "5", *onecycle)).returncode == 0
    longer = run_script("train.py", lenet_args(data_dir, run_dir, "--max-steps", "8", *onecycle))
    assert_clean_error(
        longer, "was written with max_steps=5, this run has 8; the onecycle schedule cannot be stretched"
    )
