"""The run-directory lock's rules: when a holder counts as gone, and that a live one keeps its lock."""

import os
import socket
import time

import pytest

from mnist_dist.checkpoint.run_lock import STALE_SECONDS, RunInUse, RunLock, why_stale


def test_a_holder_counts_as_gone_only_for_a_reason():
    here, alive = socket.gethostname(), os.getpid()
    assert why_stale({"host": here, "pid": alive, "heartbeat": time.time()}) is None
    assert why_stale({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 10}) is None  # another node
    assert "heartbeat is" in why_stale({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - STALE_SECONDS - 5})


def test_the_same_slurm_job_after_a_requeue_takes_its_own_lock_over(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    holder = {"host": "elsewhere", "pid": 1, "slurm_job_id": "4242", "heartbeat": time.time()}
    assert "SLURM job's (4242) earlier run" in why_stale(holder)
    assert why_stale({**holder, "slurm_job_id": "4243"}) is None


def test_a_live_holder_keeps_the_lock_and_release_removes_only_what_it_made(tmp_path):
    run_dir = tmp_path / "runs" / "name"
    first = RunLock(run_dir)
    first.acquire()
    with pytest.raises(RunInUse, match=f"in use by process {os.getpid()} on"):
        RunLock(run_dir).acquire()
    first.release()
    assert not (tmp_path / "runs").exists()  # made by this lock, left empty: removed
    run_dir.mkdir(parents=True)
    (run_dir / "kept.txt").write_text("x")
    lock = RunLock(run_dir)
    lock.acquire()
    lock.release()
    assert (run_dir / "kept.txt").exists()
