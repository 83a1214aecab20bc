"""Stack dumps on demand, with real processes: SIGQUIT (the default --dump-signal) to a rank of a
running 2-process job writes that rank's stacks and step to RUN/stacks/, says so in one line, and
training goes on to exactly the weights of an undisturbed job; with W&B on, the dumps are one artifact
of the run.

SIGQUIT goes to the training processes, never to torchrun, whose agent takes it as a stop of the whole
job (docs/SLURM.md). Each rank is signalled in turn: a dump is its own rank's, the others are not told.
A lost peer's dumps are proved in test_resume.py (a rank stopped past --collective-timeout).
"""

import re
import signal
import subprocess
import time

import pytest
from helpers import assert_same_weights, deterministic_args, start_script, wait_for, workers

# 240 optimizer steps inside the first epoch (2 x 32 samples a step), a checkpoint every 40: the
# signals come once step 40 is saved, a few seconds before the job ends.
ARGS = deterministic_args(240, "--checkpoint-every", "40")


def start(run_dir, data_dir, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = [*ARGS, "--data-dir", data_dir, "--run-dir", run_dir, *extra]
    return start_script("train.py", args, 2, env={"OMP_NUM_THREADS": "1", **(env or {})})


def dumps_of(run_dir, rank: int) -> list:
    return sorted((run_dir / "stacks").glob(f"rank-{rank}-*.txt"))


def test_sigquit_to_each_rank_dumps_its_stacks_and_step_and_training_goes_on_unchanged(data_dir, tmp_path, wandb_env):
    pytest.importorskip("wandb", reason="reads the stacks artifact from what the real wandb package writes")
    from wandb_files import offline_runs

    reference = tmp_path / "reference"
    undisturbed = start(reference, data_dir, "--wandb", "disabled")
    run_dir = tmp_path / "run"
    process = start(run_dir, data_dir, "--wandb", "offline", env=wandb_env)
    wait_for(run_dir / "checkpoints" / "step-000040" / "COMPLETE", process)
    for rank, worker in enumerate(sorted(workers(process), key=lambda worker: worker.environ()["RANK"])):
        worker.send_signal(signal.SIGQUIT)
        wait_for_dump(run_dir, rank, process)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert undisturbed.wait(timeout=300) == 0, undisturbed.communicate()[1][-3000:]
    assert_same_weights(run_dir, reference, "a stack dump changed the weights")

    for rank in (0, 1):
        (dump,) = dumps_of(run_dir, rank)
        text = dump.read_text()
        assert f"stacks of rank {rank} of 2" in text and "why: SIGQUIT (--dump-signal); training goes on" in text
        step = int(re.search(r"^where: step (\d+), epoch 0$", text, re.MULTILINE).group(1))
        assert 40 <= step <= 240
        assert "the main thread is in: " in text and 'File "' in text and "mnist_dist" in text
        assert f"note: rank {rank} wrote its stacks to {dump} (SIGQUIT, --dump-signal); training goes on." in stderr
    assert "error:" not in stderr

    (run,) = offline_runs(run_dir)
    artifact = run.artifact("stacks")
    assert artifact.name == f"stacks-{run.id}"
    assert sorted(entry.path for entry in artifact.manifest.contents) == [dumps_of(run_dir, r)[0].name for r in (0, 1)]


def wait_for_dump(run_dir, rank: int, process: subprocess.Popen, timeout: float = 30) -> None:
    """Until rank's dump is written; fails if the job ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not dumps_of(run_dir, rank):
        assert process.poll() is None, f"the job ended before rank {rank}'s dump: {process.communicate()}"
        assert time.monotonic() < deadline, f"rank {rank} wrote no stack dump in {timeout} s"
        time.sleep(0.02)
