"""A rank slower than the others, named while the job runs (train/stragglers.py): real processes, gloo.

Two processes of lenet on digits, each loading its batches through one DataLoader worker process.
The test slows rank 1 from outside: its loader worker is SIGSTOPped 70 ms of every 100 ms (its data
on a slow disk), so rank 1 waits for batches and rank 0 waits for rank 1 in the gradients'
collective. An unslowed run must warn of no rank over its whole length: FACTOR, FLOOR and PATIENCE
were chosen from such runs on the 2-core test machine under other jobs' load (their comment gives
the figures). It runs on the default, resident loader: with a worker process each, an unslowed run
beside the other tests of a suite had a rank's worker starved of CPU for 60 steps (3x the data wait,
a third of the step: a true straggler, if not one the test made).
"""

import contextlib
import socket
import subprocess
import threading
import time

import psutil
from helpers import metrics_rows, start_script, summary
from wandb_files import offline_runs

STEPS, LOG_EVERY = 200, 20
ARGS = ["--model", "lenet", "--dataset", "digits", "--batch-size", "32", "--max-steps", str(STEPS)]
ARGS += ["--log-every", str(LOG_EVERY)]
A_LOADER_WORKER = ["--loader", "dataloader", "--num-workers", "1"]
STOPPED, RUNNING = 0.07, 0.03  # seconds of each cycle


def rank_process(process: subprocess.Popen, rank: int, done: threading.Event) -> psutil.Process | None:
    """The training process of `rank` once it runs (its loader workers, forked from it, carry its RANK too)."""
    while not done.is_set():
        with contextlib.suppress(psutil.Error):
            for each in psutil.Process(process.pid).children(recursive=True):
                if each.environ().get("RANK") == str(rank) and each.parent().environ().get("RANK") != str(rank):
                    return each
        time.sleep(0.05)
    return None


def slow_loader(process: subprocess.Popen, rank: int, done: threading.Event) -> None:
    """Until `done`: `rank`'s DataLoader workers (new ones each epoch) stopped STOPPED s of every cycle."""
    trainer = rank_process(process, rank, done)
    while trainer is not None and not done.is_set():
        loaders = []
        with contextlib.suppress(psutil.Error):
            loaders = trainer.children()
        try:
            for loader in loaders:
                with contextlib.suppress(psutil.Error):
                    loader.suspend()
            time.sleep(STOPPED)
        finally:
            for loader in loaders:
                with contextlib.suppress(psutil.Error):
                    loader.resume()
        time.sleep(RUNNING)


def train(run_dir, data_dir, *extra: str, slowed_rank: int | None = None, env: dict | None = None) -> str:
    """Train ARGS and `extra` on 2 processes into run_dir, `slowed_rank`'s loader slowed; returns the
    console output."""
    options = ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", *ARGS, *extra]
    process = start_script("train.py", options, processes=2, env=env, stderr=subprocess.STDOUT)
    done = threading.Event()
    slowing = threading.Thread(target=slow_loader, args=(process, slowed_rank, done))
    if slowed_rank is not None:
        slowing.start()
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        done.set()
        if slowing.is_alive():
            slowing.join()
    assert process.returncode == 0, output[-3000:]
    return output


def slow_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " is slow: " in line]


def test_a_rank_whose_data_comes_slowly_is_named_with_its_host_and_part_and_charted(tmp_path, data_dir, wandb_env):
    output = train(tmp_path / "run", data_dir, *A_LOADER_WORKER, "--wandb", "offline", slowed_rank=1, env=wandb_env)
    host, lines = socket.gethostname(), slow_lines(output)
    assert lines, output[-3000:]
    for line in lines:  # one line a streak of slow rows: the first after PATIENCE rows
        assert line.startswith(f"warning: rank 1 on {host} is slow: data wait "), line
        assert line.endswith(f"every rank waits for it: check {host} for a slow disk or busy loader workers"), line
    rows = [row for row in metrics_rows(tmp_path / "run") if row["type"] == "ranks"]
    assert [row["step"] for row in rows] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert all(len(row[name]) == 2 for row in rows for name in ("data_wait_ms", "forward_ms", "step_ms"))
    assert sum(row["data_wait_ms"][1] > 2 * row["data_wait_ms"][0] for row in rows) >= len(rows) // 2
    ranks = summary(tmp_path / "run")["ranks"]
    assert ranks["hosts"] == [host, host] and ranks["steps"] == STEPS
    assert ranks["slowest_rank"] == 1 and ranks["lost_to_slowest"] > 0.1, ranks
    assert ranks["data_wait_seconds"][1] > 2 * ranks["data_wait_seconds"][0]
    # W&B: at the epoch's row (its only one: --max-steps ends it), a chart per quantity of every row so far.
    (run,) = offline_runs(tmp_path / "run")
    (charted,) = [row for row in run.history if "ranks/step_ms_table" in row]
    assert charted["_step"] == STEPS
    for name in ("data_wait_ms", "forward_ms", "step_ms"):
        assert charted[f"ranks/{name}_table"]["nrows"] == len(rows) * 2  # a (step, rank, value) row each


def test_an_unslowed_run_names_no_rank(tmp_path, data_dir):
    output = train(tmp_path / "run", data_dir)
    assert slow_lines(output) == [], output[-3000:]
    rows = [row for row in metrics_rows(tmp_path / "run") if row["type"] == "ranks"]
    assert [row["step"] for row in rows] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    ranks = summary(tmp_path / "run")["ranks"]
    assert len(ranks["step_seconds"]) == 2 and 0 <= ranks["lost_to_slowest"] < 1
