"""Faults with real processes: SIGKILL, SIGTERM on one rank, torchrun restarts, NaN, bad checkpoints.

A resumed run must end with exactly the weights of an uninterrupted one (deterministic mode, the
same seed), having trained every sample of the interrupted epoch once.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers import (
    assert_same_weights,
    deterministic_args,
    made_once,
    metrics_rows,
    start_script,
    wait_for,
    workers,
)
from safetensors.torch import save_file

from mnist_dist.train.stacks import ANSWER_SECONDS

# 240 optimizer steps inside the first epoch (digits has 20,000 training images), checkpoints every 40,
# a metrics.jsonl row every 10 (logging changes no weights).
ARGS = deterministic_args(240, "--checkpoint-every", "40", "--log-every", "10", "--wandb", "disabled")
WEIGHTS_DIFFER = "weights differ from the uninterrupted run"


def start(run_dir: Path, data_dir: Path, processes: int, extra=(), rendezvous=None) -> subprocess.Popen:
    """train.py in the background: python for 1 process, torchrun otherwise (`rendezvous`: its options in place
    of the fixed rendezvous address). One thread a process in every run of this module, 1-process runs included."""
    args = [*ARGS, "--data-dir", data_dir, "--run-dir", run_dir, *extra]
    return start_script("train.py", args, processes, env={"OMP_NUM_THREADS": "1"}, rendezvous=rendezvous)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def run(run_dir, data_dir, processes, extra=()) -> tuple[int, str, str]:
    return finish(start(run_dir, data_dir, processes, extra))


def epoch_row(run_dir: Path) -> dict:
    return next(row for row in reversed(metrics_rows(run_dir)) if row["type"] == "epoch")


def run_to_the_end(run_dir: Path, data_dir: Path, processes: int) -> None:
    code, _, stderr = run(run_dir, data_dir, processes)
    assert code == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """`uninterrupted(processes)`: the reference run with 1 or 2 processes, made once for the module."""
    return made_once(tmp_path_factory, lambda run_dir, processes: run_to_the_end(run_dir, data_dir, processes))


def kill_once_written(run_dir: Path, data_dir: Path, processes: int, checkpoint: str, extra=()) -> None:
    """Start the run and SIGKILL it once `checkpoint` is complete (a newer one may be half-written)."""
    process = start(run_dir, data_dir, processes, extra)
    wait_for(run_dir / "checkpoints" / checkpoint / "COMPLETE", process)
    killed = workers(process)
    for worker in killed:
        worker.kill()
    process.kill()
    finish(process)
    psutil.wait_procs(killed, timeout=30)  # gone, as after a real crash: the next run may take over the lock


def kill_mid_epoch_then_resume(run_dir: Path, data_dir: Path, processes: int, extra=()) -> None:
    kill_once_written(run_dir, data_dir, processes, "step-000080", extra)
    assert not (run_dir / "summary.json").exists(), "killed too late: the run had finished"
    code, stdout, stderr = run(run_dir, data_dir, processes, extra)
    assert code == 0, stderr[-3000:]
    step = int(re.search(r"resumed from \S+step-(\d+)", stdout).group(1))
    # The resumed epoch's speed counts what this job trained, not the samples trained before it.
    row = epoch_row(run_dir)
    trained = (240 - step) * 32 * processes
    assert row["samples_per_second"] * row["epoch_seconds"] == pytest.approx(trained, rel=1e-6)


def assert_same_run(resumed_dir: Path, reference_dir: Path, processes: int) -> None:
    assert_same_weights(resumed_dir, reference_dir, WEIGHTS_DIFFER)
    # The same samples, each once: identical sample count and loss sums over the interrupted epoch.
    resumed, reference = epoch_row(resumed_dir), epoch_row(reference_dir)
    assert resumed["train_samples"] == reference["train_samples"] == 240 * 32 * processes
    assert resumed["train_loss"] == reference["train_loss"]


@pytest.fixture(scope="module")
def resumed_after_sigkill(tmp_path_factory, data_dir):
    """`resumed_after_sigkill(processes)`: a run SIGKILLed mid-epoch, then resumed by the same command; made
    once for the module (its tests only read it)."""
    return made_once(
        tmp_path_factory, lambda run_dir, processes: kill_mid_epoch_then_resume(run_dir, data_dir, processes)
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(processes, uninterrupted, resumed_after_sigkill):
    assert_same_run(resumed_after_sigkill(processes), uninterrupted(processes), processes)


def test_sigkill_then_resume_is_exact_with_batchnorm_and_augmentation_on_two_processes(data_dir, tmp_path):
    # Each rank keeps its own BatchNorm statistics while training (no broadcast before every forward);
    # checkpoints and the saved model hold rank 0's. Each sample's shift comes from (seed, epoch, index):
    # the resumed half-epoch draws the same ones.
    extra = ["--model", "cnn", "--augment"]
    code, _, stderr = run(tmp_path / "reference", data_dir, 2, extra)
    assert code == 0, stderr[-3000:]
    kill_mid_epoch_then_resume(tmp_path / "run", data_dir, 2, extra)
    assert_same_run(tmp_path / "run", tmp_path / "reference", 2)


def test_sigterm_on_one_rank_checkpoints_all_ranks_and_exits_3(uninterrupted, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, data_dir, 2)
    wait_for(run_dir / "checkpoints" / "step-000040" / "COMPLETE", process)
    rank1 = next(p for p in workers(process) if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGTERM)  # only rank 1 knows; rank 0 learns at the next check
    code, _, stderr = finish(process)
    assert code != 0  # torchrun reports its workers' exit code 3 as a failure
    assert "error: stopped by a stop signal (on another rank)" in stderr, stderr[-2000:]
    assert "run the same command again to resume" in stderr
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest != "step-000040" and not (run_dir / "summary.json").exists()
    code, stdout, stderr = run(run_dir, data_dir, 2)
    assert code == 0, stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / latest}" in stdout
    assert_same_weights(run_dir, uninterrupted(2), WEIGHTS_DIFFER)


def test_sigterm_alone_exits_3_with_a_checkpoint(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, data_dir, 1)
    wait_for(run_dir / "checkpoints" / "step-000040" / "COMPLETE", process)
    process.send_signal(signal.SIGTERM)
    code, _, stderr = finish(process)
    assert code == 3, stderr[-2000:]
    assert "error: stopped by SIGTERM after step" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_checkpoints_exits_3_and_the_same_command_resumes(processes, uninterrupted, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, data_dir, processes)
    wait_for(run_dir / "checkpoints" / "step-000040" / "COMPLETE", process)
    for pid in {process.pid, *(worker.pid for worker in workers(process))}:  # as a terminal's Ctrl-C does
        os.kill(pid, signal.SIGINT)
    code, _, stderr = finish(process)
    # torchrun ends with its own SignalException (exit 1) after its workers exited 3 (README).
    assert code == (3 if processes == 1 else 1), stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "stopped by SIGINT after step" in lines[0], stderr[-2000:]
    assert "KeyboardInterrupt" not in stderr
    code, stdout, stderr = run(run_dir, data_dir, processes)
    assert code == 0 and "resumed from" in stdout, stderr[-3000:]
    assert_same_weights(run_dir, uninterrupted(processes), WEIGHTS_DIFFER)
    # Stopped at any step, between two rows: each row, the first after the resume too, as uninterrupted.
    assert step_rows(run_dir) == step_rows(uninterrupted(processes))


def step_rows(run_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in metrics_rows(run_dir) if row["type"] == "step"]


def test_a_stopped_rank_ends_the_job_after_the_timeout_and_the_same_command_resumes(uninterrupted, data_dir, tmp_path):
    run_dir, timeout = tmp_path / "run", ["--collective-timeout", "10"]
    process = start(run_dir, data_dir, 2, timeout)
    wait_for(run_dir / "checkpoints" / "step-000040" / "COMPLETE", process)
    rank0, rank1 = sorted(workers(process), key=lambda worker: worker.environ().get("RANK"))
    rank1.suspend()  # SIGSTOP: a stuck node, or a process swapped out
    started = time.monotonic()
    try:
        # Rank 0 now waits in a collective, and still dumps its stacks at once on SIGQUIT (train/stacks.py).
        time.sleep(2)
        rank0.send_signal(signal.SIGQUIT)
        wait_for(run_dir / "stacks", process, timeout=5)
        asked = time.monotonic() - started
        rank0.wait(timeout=60)  # it gives up after the collective's 10 s, and waits ANSWER_SECONDS for dumps
        gave_up = time.monotonic() - started
        # torchrun would SIGKILL the stopped rank 30 s after rank 0 ended (it cannot act on SIGTERM):
        # the same end, without the wait.
        rank1.kill()
        code, _, stderr = finish(process, timeout=120)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            rank1.resume()
    assert asked < 10 and gave_up < 10 + ANSWER_SECONDS + 15
    assert code != 0 and re.search(r"exitcode\s*:\s*5\b", stderr), stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "another process stopped responding or ended" in lines[0], stderr[-3000:]
    assert "a collective waits at most 10 s" in lines[0] and "is intact" in lines[0]
    # The one line does not cost the evidence: rank 0's full traceback is in the run's folder, and its
    # stacks; the line names the rank that wrote none.
    log = run_dir / "error-rank-0.log"
    assert f"the traceback is in {log}" in lines[0] and "Traceback" in log.read_text()
    assert f"(rank 1 did not answer, the stacks of the others are in {run_dir / 'stacks'}; " in lines[0]
    assert not list((run_dir / "stacks").glob("rank-1-*"))
    on_demand, lost = [path.read_text() for path in sorted((run_dir / "stacks").glob("rank-0-*.txt"))]
    assert "why: SIGQUIT" in on_demand and "why: a collective failed" in lost
    assert "where the collective failed: " in lost and 'File "' in lost
    # Both name the step rank 0 was blocked at: the first while it waited in the collective.
    where = [re.search(r"^where: step (\d+), epoch 0$", text, re.MULTILINE).group(1) for text in (on_demand, lost)]
    assert where[0] == where[1] and int(where[0]) >= 40
    code, stdout, stderr = run(run_dir, data_dir, 2, timeout)
    assert code == 0 and "resumed from" in stdout, stderr[-3000:]
    assert_same_weights(run_dir, uninterrupted(2), WEIGHTS_DIFFER)


def test_torchrun_restart_resumes_and_matches(uninterrupted, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    process = start(run_dir, data_dir, 2, rendezvous=["--max-restarts", "1", "--standalone"])
    wait_for(run_dir / "checkpoints" / "step-000080" / "COMPLETE", process)
    next(p for p in workers(process) if p.environ().get("RANK") == "1").kill()
    code, stdout, stderr = finish(process)
    assert code == 0, stderr[-3000:]
    assert "resumed from" in stdout
    assert_same_weights(run_dir, uninterrupted(2), WEIGHTS_DIFFER)


@pytest.fixture
def checkpointed_run(uninterrupted, tmp_path) -> Path:
    """A copy of the 1-process reference run, with its checkpoints."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted(1), run_dir)
    return run_dir


def newest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def test_a_crafted_pickle_is_refused_and_never_runs(checkpointed_run, data_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"optimizer": Exploit()}, newest(checkpointed_run) / "training.pt")
    code, _, stderr = run(checkpointed_run, data_dir, 1, ["--resume", newest(checkpointed_run)])
    assert code == 2, stderr[-2000:]
    assert "refusing to load" in stderr and "Traceback" not in stderr
    assert not marker.exists()


def test_truncated_weights_are_a_clear_error(checkpointed_run, data_dir):
    path = newest(checkpointed_run) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    code, _, stderr = run(checkpointed_run, data_dir, 1, ["--resume", path.parent])  # named: it must load
    assert code == 2 and "cannot load the weights" in stderr and "Traceback" not in stderr


def truncate_weights(checkpoint: Path, rank: int) -> None:
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def string_step(checkpoint: Path, rank: int) -> None:
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, "step": "240"}))


def null_state(checkpoint: Path, rank: int) -> None:
    (checkpoint / "state.json").write_text("null")


def remove_rank_file(checkpoint: Path, rank: int) -> None:
    (checkpoint / f"rank-{rank}.pt").unlink()  # the last rank's only: the others could load it


def huge_step(checkpoint: Path, rank: int) -> None:
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, "step": 999999}))  # valid JSON, a lie


def other_model(checkpoint: Path, rank: int) -> None:
    save_file({"weight": torch.zeros(10, 784), "bias": torch.zeros(10)}, checkpoint / "model.safetensors")


def bad_epoch_sums(checkpoint: Path, rank: int) -> None:
    path = checkpoint / f"rank-{rank}.pt"
    torch.save({**torch.load(path), "epoch_sums": {"loss": "a lot"}}, path)


@pytest.fixture(scope="module")
def killed_after_160(tmp_path_factory, data_dir):
    """`killed_after_160(processes)`: a run SIGKILLed once its checkpoint of step 160 is complete, made once
    for the module; each test damages a copy of it."""
    return made_once(
        tmp_path_factory, lambda run_dir, processes: kill_once_written(run_dir, data_dir, processes, "step-000160")
    )


@pytest.mark.parametrize(
    "damage, processes",
    [
        (truncate_weights, 1),
        (string_step, 1),
        (null_state, 1),
        (remove_rank_file, 2),
        (huge_step, 1),
        (other_model, 1),
        (bad_epoch_sums, 2),
    ],
    ids=["truncated-weights", "string-step", "null-state", "missing-rank-file", "huge-step", "other-model", "sums"],
)
def test_auto_resume_skips_a_damaged_newest_checkpoint_and_ends_identical(
    damage, processes, uninterrupted, killed_after_160, data_dir, tmp_path
):
    run_dir = tmp_path / "run"
    shutil.copytree(killed_after_160(processes), run_dir)
    damaged = newest(run_dir)
    damage(damaged, processes - 1)
    code, stdout, stderr = run(run_dir, data_dir, processes)
    assert code == 0, stderr[-3000:]
    warnings = [line for line in stdout.splitlines() if line.startswith("warning: skipping checkpoint")]
    assert len(warnings) == 1 and str(damaged) in warnings[0], stdout[-3000:]
    assert "resumed from" in stdout and "Traceback" not in stderr
    assert_same_weights(run_dir, uninterrupted(processes), WEIGHTS_DIFFER)


def test_a_checkpoint_of_another_model_is_refused(checkpointed_run, data_dir):
    code, _, stderr = run(checkpointed_run, data_dir, 1, ["--model", "mlp"])
    assert code == 2 and "written with model='lenet', this run has 'mlp'" in stderr


def test_metrics_log_has_one_row_per_step_after_a_resume(resumed_after_sigkill):
    # Killed after step 80 was checkpointed, and maybe after later steps were logged: those rows are
    # written again by the resumed job, and must not be there twice.
    steps = [row["step"] for row in metrics_rows(resumed_after_sigkill(1)) if row["type"] == "step"]
    assert steps == list(range(10, 241, 10))
