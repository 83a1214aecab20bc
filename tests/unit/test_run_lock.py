"""The run-directory lock's rules: when a holder counts as gone, that a live one keeps its lock (stopped
with Ctrl-Z too), that a lock is never seen without its holder's facts, and that a failed write leaves
nothing behind. Holders are real processes and locks real files."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnist_dist.checkpoint import run_lock
from mnist_dist.checkpoint.run_lock import (
    LOCK_FILE,
    STALE_SECONDS,
    RunInUse,
    RunLock,
    live_holder,
    process_started,
    why_stale,
)


def write_lock(run_dir: Path, **facts) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps({"host": socket.gethostname(), "slurm_job_id": None, **facts}))
    return path


def acquire(run_dir: Path) -> tuple[RunLock, list[str]]:
    said = []
    lock = RunLock(run_dir, say=said.append)
    lock.acquire()
    return lock, said


@pytest.fixture
def sleeper():
    """A live process of this host that is not a training job; killed at the end."""
    child = subprocess.Popen(["sleep", "600"])
    yield child
    os.kill(child.pid, signal.SIGCONT)
    child.kill()
    child.wait()


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
    assert why_stale(holder, own_slurm_job=False) is None  # a reader beside it in the same allocation


def test_a_live_holder_keeps_the_lock_and_release_removes_only_what_it_made(tmp_path):
    run_dir = tmp_path / "runs" / "name"
    assert live_holder(run_dir) is None
    first = RunLock(run_dir)
    first.acquire()
    assert live_holder(run_dir)["pid"] == os.getpid()
    with pytest.raises(RunInUse, match=f"in use by process {os.getpid()} on"):
        RunLock(run_dir).acquire()
    first.release()
    assert not (tmp_path / "runs").exists()  # made by this lock, left empty: removed
    run_dir.mkdir(parents=True)
    (run_dir / "kept.txt").write_text("x")
    lock = RunLock(run_dir)
    lock.acquire()
    lock.release()
    assert [path.name for path in run_dir.iterdir()] == ["kept.txt"]


@pytest.mark.parametrize("content", ["", '{"host": "node7", "pi'], ids=["empty", "half-written"])
def test_an_empty_lock_is_held_while_fresh_and_taken_over_once_old(tmp_path, content):
    """An older version's lock between its create and its write, or a damaged one: never a heartbeat of 0."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(content)
    with pytest.raises(
        RunInUse, match=r"in use by a job whose lock .*\.lock is empty or unreadable, written \d+ s ago"
    ):
        RunLock(run_dir).acquire()
    assert live_holder(run_dir) is not None
    old = time.time() - STALE_SECONDS - 5
    os.utime(run_dir / LOCK_FILE, (old, old))
    assert live_holder(run_dir) is None
    lock, said = acquire(run_dir)
    assert len(said) == 1 and "empty or unreadable and was last written 30" in said[0], said
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert [path.name for path in run_dir.iterdir()] == [LOCK_FILE]  # no temporary, no stale copy left
    lock.release()
    assert not run_dir.exists() or not list(run_dir.iterdir())


def test_a_lock_whose_heartbeat_is_not_a_time_counts_its_files_age(tmp_path):
    path = write_lock(tmp_path)
    path.write_text('{"host": "node7", "pid": 7, "heartbeat": NaN}')  # damaged: json reads NaN
    old = time.time() - STALE_SECONDS - 5
    os.utime(path, (old, old))
    lock, said = acquire(tmp_path)
    assert len(said) == 1 and "heartbeat is 30" in said[0], said
    lock.release()


def wait_until_stopped(pid: int) -> None:
    deadline = time.time() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.time() < deadline, "the process did not stop"
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's state in /proc")
def test_a_stopped_holder_on_this_host_keeps_its_lock_however_old_its_heartbeat(tmp_path, sleeper):
    """Ctrl-Z for longer than STALE_SECONDS: the job goes on when continued, so nobody may take its lock."""
    os.kill(sleeper.pid, signal.SIGSTOP)
    wait_until_stopped(sleeper.pid)
    stale = time.time() - 1000
    for started in ({}, {"started": process_started(sleeper.pid)}):  # an older version's lock, and this one's
        write_lock(tmp_path, pid=sleeper.pid, heartbeat=stale, **started)
        with pytest.raises(RunInUse, match=f"in use by process {sleeper.pid} on .*, stopped .*fg"):
            RunLock(tmp_path).acquire()
        assert live_holder(tmp_path)["pid"] == sleeper.pid


def test_a_pid_reused_by_another_process_does_not_hold_the_lock(tmp_path, sleeper):
    """The lock names the process by its pid and its start time: the same pid started later is another."""
    started = process_started(sleeper.pid)
    if started is None:
        pytest.skip("no process start times without /proc")
    write_lock(tmp_path, pid=sleeper.pid, started=started - 1, heartbeat=time.time())
    lock, said = acquire(tmp_path)
    assert said == [
        f"warning: taking over the lock of {tmp_path}: its process {sleeper.pid} on {socket.gethostname()} has ended."
    ]
    lock.release()


def test_a_holder_on_another_host_is_taken_over_once_its_heartbeat_is_stale(tmp_path):
    write_lock(tmp_path, host="node-elsewhere", pid=os.getpid(), heartbeat=time.time() - 10)
    with pytest.raises(RunInUse, match="in use by process .* on node-elsewhere"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, host="node-elsewhere", pid=os.getpid(), heartbeat=time.time() - STALE_SECONDS - 5)
    lock, said = acquire(tmp_path)
    assert len(said) == 1 and f"more than {STALE_SECONDS} s" in said[0], said
    assert [path.name for path in tmp_path.iterdir()] == [LOCK_FILE]
    lock.release()
    assert not list(tmp_path.iterdir())


def test_a_lock_refreshed_between_the_look_and_the_take_over_is_given_back(tmp_path):
    path = write_lock(tmp_path, host="node-elsewhere", pid=7, heartbeat=time.time())
    refreshed = path.read_text()
    looked = {"host": "node-elsewhere", "pid": 7, "slurm_job_id": None, "heartbeat": time.time() - 1000}
    RunLock(tmp_path)._take_over(looked)  # what the lock said when this job looked, before its holder beat
    assert path.read_text() == refreshed
    assert [path.name for path in tmp_path.iterdir()] == [LOCK_FILE]


def test_a_holder_whose_lock_was_taken_over_leaves_the_new_holders_lock(tmp_path, monkeypatch):
    """A holder that was taken for dead (its node cut off) and comes back neither rewrites nor removes it."""
    lock, said = acquire(tmp_path)  # its heartbeat thread waits HEARTBEAT_SECONDS: this test beats for it
    # The taker's lock replaces this job's in one step, as its link does after the stale one went aside.
    taker = write_lock(tmp_path / "taker", host="node-elsewhere", pid=7, heartbeat=time.time())
    os.replace(taker, tmp_path / LOCK_FILE)
    taker.parent.rmdir()
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0)
    beat = threading.Thread(target=lock._beat, daemon=True)  # ends once it has seen the taker's lock
    beat.start()
    beat.join(timeout=10)
    assert said == [
        f"warning: process 7 on node-elsewhere took over the lock of {tmp_path}, taking this job for gone; "
        "two jobs now write there: stop this one."
    ]
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-elsewhere"


def contend(root: str, rounds: int, barrier, results) -> None:
    """One contender: in each round, acquire the round's folder at the same moment as the others."""
    outcomes = []
    for number in range(rounds):
        said = []
        lock = RunLock(Path(root) / str(number), say=said.append)
        barrier.wait()
        try:
            lock.acquire()
            outcome = "won"
        except RunInUse as refusal:
            lock, outcome = None, str(refusal)
        barrier.wait()  # every loser has looked before the winner lets go
        if lock is not None:
            lock.release()
        outcomes.append((outcome, said))
    results.put((os.getpid(), outcomes))


def test_of_jobs_starting_at_once_exactly_one_wins_and_none_sees_an_empty_lock(tmp_path):
    processes, rounds = 2, 150
    spawn = multiprocessing.get_context("spawn")  # the test process may hold torch's threads: no fork
    barrier, results = spawn.Barrier(processes, timeout=60), spawn.Queue()
    contenders = [
        spawn.Process(target=contend, args=(str(tmp_path), rounds, barrier, results)) for _ in range(processes)
    ]
    for contender in contenders:
        contender.start()
    outcomes = dict(results.get(timeout=120) for _ in contenders)
    for contender in contenders:
        contender.join(timeout=30)
    for number in range(rounds):
        each = {pid: outcomes[pid][number] for pid in outcomes}
        winners = [pid for pid, (outcome, _) in each.items() if outcome == "won"]
        assert len(winners) == 1, (number, each)
        for pid, (outcome, said) in each.items():
            assert not said, (number, said)  # nobody took a lock over
            assert pid in winners or f"in use by process {winners[0]} on" in outcome, (number, outcome)
    assert not list(tmp_path.iterdir())


FILL_NOTHING = """
import resource, signal, sys
from pathlib import Path
from mnist_dist.checkpoint.run_lock import RunLock
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of ending us
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file may hold a byte: every write fails, as on a full disk
try:
    RunLock(Path(sys.argv[1])).acquire()
except OSError as error:
    print(error.strerror)
"""


def test_a_failed_write_of_the_lock_leaves_no_lock_no_temporary_and_no_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", FILL_NOTHING, tmp_path / "runs" / "name"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "File too large", result.stdout + result.stderr
    assert not list(tmp_path.iterdir())
