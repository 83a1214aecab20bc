"""Resuming on another number of processes (checkpoint/resize.py), with real processes: the run keeps its
global batch and goes on at the next global sample, so it ends where the uninterrupted run ends, to float
rounding (lenet has no BatchNorm); a number of processes that cannot keep the global batch is refused.

Float rounding grows chaotically once lenet at lr 0.05 trains past ~40 steps (1 against 2 uninterrupted
processes: 3e-7 at step 40, 0.08 at step 80); at lr 0.02 it stays at 4e-7 over these 120 steps.
"""

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import assert_clean_error, deterministic_args, made_once, metrics_rows, start_script, wait_for, workers
from safetensors.torch import load_file

ARGS = deterministic_args(120, "--lr", "0.02", "--checkpoint-every", "20", "--log-every", "10", "--wandb", "disabled")


def run(run_dir: Path, data_dir: Path, processes: int) -> subprocess.Popen:
    args = [*ARGS, "--data-dir", data_dir, "--run-dir", run_dir]
    return start_script("train.py", args, processes, env={"OMP_NUM_THREADS": "1"})


def ended(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    def make(run_dir: Path, processes: int) -> None:
        code, _, stderr = ended(run(run_dir, data_dir, processes))
        assert code == 0, stderr[-3000:]

    return made_once(tmp_path_factory, make)


def stopped_mid_epoch(run_dir: Path, data_dir: Path, processes: int) -> int:
    """Start the run and SIGTERM every rank once its checkpoint of step 20 is complete: it checkpoints where it
    is and exits 3 (torchrun: 1). Returns the step of that checkpoint."""
    process = run(run_dir, data_dir, processes)
    wait_for(run_dir / "checkpoints" / "step-000020" / "COMPLETE", process)
    for worker in workers(process):
        worker.send_signal(signal.SIGTERM)
    code, _, stderr = ended(process)
    assert code in (1, 3) and "error: stopped by SIGTERM after step" in stderr, stderr[-3000:]
    return int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))


def epoch_row(run_dir: Path) -> dict:
    return next(row for row in reversed(metrics_rows(run_dir)) if row["type"] == "epoch")


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_a_run_resumes_on_another_number_of_processes_where_it_stopped(
    before, after, uninterrupted, data_dir, tmp_path
):
    """The global batch kept (processes x batch), the next global sample, the ranks' sums merged: the weights
    of the uninterrupted run to float rounding, each step logged once, the change recorded."""
    run_dir = tmp_path / "run"
    step = stopped_mid_epoch(run_dir, data_dir, before)
    code, stdout, stderr = ended(run(run_dir, data_dir, after))
    assert code == 0, stderr[-3000:]
    assert f"from {before} processes to {after} at step {step})" in stdout, stdout[-3000:]
    assert "resumed on" in stdout  # the config table's why, beside the batch chosen (wrapped in its cell)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["batch_size"] == 32 * before // after
    reference = uninterrupted(before)
    ours, theirs = load_file(run_dir / "last.safetensors"), load_file(reference / "last.safetensors")
    assert max((ours[name] - theirs[name]).abs().max().item() for name in theirs) < 1e-4
    rows = metrics_rows(run_dir)
    assert [row["step"] for row in rows if row["type"] == "step"] == list(range(10, 121, 10))
    changes = [{"step": step, "from": before, "to": after}]
    assert [row for row in rows if row["type"] == "world_size"] == [{"type": "world_size", **changes[0]}]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size_changes"] == changes and summary["world_size"] == after
    # The epoch's train loss and accuracy are over all its samples, those the old ranks trained included.
    ours, theirs = epoch_row(run_dir), epoch_row(reference)
    assert ours["train_samples"] == theirs["train_samples"] == 120 * 32 * before
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
    assert ours["train_accuracy"] == pytest.approx(theirs["train_accuracy"], abs=2 / ours["train_samples"])


def test_a_world_size_that_cannot_keep_the_global_batch_is_refused_and_changes_nothing(
    uninterrupted, data_dir, tmp_path
):
    """Written by 1 process with batch 32: 3 processes cannot share 32 samples a step."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted(1), run_dir)
    files = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    code, stdout, stderr = ended(run(run_dir, data_dir, 3))
    assert_clean_error(
        subprocess.CompletedProcess([], code, stdout, stderr),
        "global batch of 32 (1 process x 32 x 1 accumulated) does not divide among 3 processes",
        "resume on 1, 2, 4, 8, 16, 32 processes",
        processes=3,
    )
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == files
