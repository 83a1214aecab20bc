"""Stop signals and a stuck rank outside the training loop, with real processes: during start-up (before
the first step) and during the final evaluation and writes (issue 21).

A stop signal is honoured from the moment the train command has read its options: these tests send it
as soon as a worker's kernel shows the handler installed (SigCgt in /proc/PID/status), which is still
seconds before torch has loaded and the processes have met.
"""

import contextlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from helpers import LENET_FIVE_STEPS, error_lines, start_script, summary, workers
from safetensors import safe_open

STARTUP_LINE = (
    "error: stopped by SIGTERM during start-up, before the first step: nothing to checkpoint yet; "
    "run the same command again to start."
)


def catches(pid: int, number: int) -> bool:
    """Whether process `pid` has a handler of its own for signal `number` (the kernel's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    return bool(mask >> (number - 1) & 1)


def training_processes(process: subprocess.Popen, processes: int, timeout: float = 60) -> list[psutil.Process]:
    """The run's `processes` training processes, by rank, once each has started."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(psutil.Error):  # a launcher's child that is still starting, or already gone
            found = [worker for worker in workers(process) if "train.py" in " ".join(worker.cmdline())]
            if len(found) == processes:
                return sorted(found, key=lambda worker: int(worker.environ().get("RANK", "0")))
        assert time.monotonic() < deadline, "the training processes did not start"
        time.sleep(0.005)


def once_stop_signals_count(process: subprocess.Popen, processes: int, timeout: float = 60) -> list[psutil.Process]:
    """training_processes, once every one of them handles SIGTERM itself (the train command's StopRequest)."""
    ranks = training_processes(process, processes, timeout)
    deadline = time.monotonic() + timeout
    while not all(catches(rank.pid, signal.SIGTERM) for rank in ranks):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the stop signals' handlers were not installed"
        time.sleep(0.005)
    return ranks


def end_all(process: subprocess.Popen) -> None:
    """Kill a run that a failed test leaves behind, its launcher's children first (a killed torchrun leaves them)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.resume()  # a SIGSTOPped one would not die before it runs again
                child.kill()
    process.kill()
    process.communicate()


def worker_exit_codes(stderr: str) -> list[int]:
    """The exit codes torchrun reports for its failed workers."""
    return [int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", stderr)]


def assert_no_traceback_of_ours(stderr: str) -> None:
    frames = [line for line in stderr.splitlines() if line.lstrip().startswith('File "')]
    assert not [line for line in frames if "mnist_dist" in line or "train.py" in line], stderr[-3000:]


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: (size, modification time in ns), by path."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*")}


@pytest.mark.parametrize("processes, signalled", [(1, "every rank"), (2, "every rank"), (2, "rank 1 alone")])
def test_a_stop_signal_during_start_up_exits_3_with_one_line_and_leaves_nothing(
    processes, signalled, lenet_five_steps, data_dir, tmp_path
):
    run_dir = tmp_path / "run"
    if processes == 1:  # an existing run, run again: its folder stays as it was
        shutil.copytree(lenet_five_steps, run_dir)
        before = folder_state(run_dir)
    args = ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", *LENET_FIVE_STEPS]
    process = start_script("train.py", args, processes)
    try:
        ranks = once_stop_signals_count(process, processes)
        for rank in ranks if signalled == "every rank" else ranks[1:]:
            rank.send_signal(signal.SIGTERM)  # SLURM signals every task; one rank alone learns it from the others
        _, stderr = process.communicate(timeout=180)
    finally:
        end_all(process)
    assert error_lines(stderr) == [STARTUP_LINE], stderr[-3000:]
    assert_no_traceback_of_ours(stderr)
    if processes == 1:
        assert process.returncode == 3, stderr[-3000:]
        assert folder_state(run_dir) == before
    else:
        # A rank still exiting when the other has ended may get torchrun's own SIGTERM after its handlers are gone.
        codes = worker_exit_codes(stderr)
        assert process.returncode == 1 and 3 in codes and set(codes) <= {3, -15}, stderr[-3000:]
        assert not run_dir.exists()  # neither the run's folder nor a lone .lock


def test_a_stop_signal_during_the_final_evaluation_finishes_the_record_then_exits_3(data_dir, tmp_path):
    # cnn-wide: a final evaluation of the test split long enough (about a second here) to signal into. Its last
    # checkpoint (step 5, not a multiple of --checkpoint-every) is the epoch end's: written after the loop's
    # last agreement on a stop, so a signal sent once it is `latest` reaches the final evaluation and writes.
    run_dir = tmp_path / "run"
    args = ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", "--model", "cnn-wide"]
    args += ["--max-steps", "5", "--checkpoint-every", "2", "--batch-size", "32", "--deterministic"]
    process = start_script("train.py", args, 2)
    try:
        ranks = training_processes(process, 2)
        latest = run_dir / "checkpoints" / "latest"
        deadline = time.monotonic() + 180
        while not (latest.exists() and latest.read_text().strip() == "step-000005"):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
        for rank in ranks:
            rank.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=180)
    finally:
        end_all(process)
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(
        "error: stopped by SIGTERM during the final evaluation and writes: "
    ), stderr[-3000:]
    assert f"they were finished first, so the run is complete in {run_dir}" in lines[0]
    codes = worker_exit_codes(stderr)
    assert process.returncode == 1 and 3 in codes and set(codes) <= {3, -15}, stderr[-3000:]
    assert_no_traceback_of_ours(stderr)
    # A whole record: summary.json, the last checkpoint and the weights files all of step 5.
    results = summary(run_dir)
    assert results["steps"] == 5 and latest.read_text().strip() == "step-000005"
    for name, step in (("model.safetensors", results["kept_step"]), ("last.safetensors", 5)):
        with safe_open(str(run_dir / name), framework="pt") as weights:
            assert weights.metadata()["step"] == str(step), name
    again = start_script("train.py", args, 2)
    stdout, stderr = again.communicate(timeout=180)
    assert again.returncode == 0, stderr[-3000:]
    assert f"run {run_dir} has finished (step 5, " in stdout and "nothing to do" in stdout


@pytest.mark.parametrize("when", ["before the rendezvous", "once the run is locked"])
def test_a_rank_stopped_during_start_up_ends_the_job_after_the_timeout_with_exit_5(when, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", *LENET_FIVE_STEPS]
    # A short timeout: rank 1 never answers here, so nothing is gained by waiting longer for it.
    process = start_script("train.py", [*args, "--collective-timeout", "5"], 2)
    try:
        rank0, rank1 = training_processes(process, 2)
        while when == "once the run is locked" and not (run_dir / ".lock").exists():
            assert process.poll() is None, process.communicate()
            time.sleep(0.002)
        # SIGSTOP as soon as it exists (before the rendezvous), or once rank 0 holds the run's lock (then rank 0
        # waits in the lock's agreement or the data's): a stuck node, or a process swapped out.
        rank1.suspend()
        started = time.monotonic()
        rank0.wait(timeout=90)  # it gives up after the timeout's 5 s
        gave_up = time.monotonic() - started
        rank1.kill()  # as torchrun would, 30 s after rank 0 ended (a stopped process cannot act on SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        end_all(process)
    # 5 s of waiting, after rank 0's own start-up (torch's import: seconds, more on a loaded machine).
    assert gave_up < 5 + 30, gave_up
    assert process.returncode == 1 and 5 in worker_exit_codes(stderr), stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("error: another process stopped responding or ended during start-up, before the first")
    assert "a collective waits at most 5 s" in lines[0]
    assert lines[0].endswith("nothing to checkpoint yet; run the same command again to start.")
    assert_no_traceback_of_ours(stderr)
    # No lock left behind; at most the evidence of a job that held the folder: rank 0's traceback and stack dump.
    left = {str(path.relative_to(run_dir)) for path in run_dir.rglob("*")} if run_dir.exists() else set()
    assert {re.sub(r"rank-0-.*\.txt$", "rank-0.txt", path) for path in left} <= {
        "error-rank-0.log",
        "stacks",
        "stacks/rank-0.txt",
    }, left
