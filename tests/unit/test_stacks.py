"""Stack dumps (train/stacks.py) in this process and in real child processes: the dump signal is
answered by the dumper's own thread while the main thread is blocked, the dump of a lost peer names
the ranks that wrote none, the NCCL flight recorder is pointed into the run folder, and no failure to
write a dump or upload one costs the run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from mnist_dist.config import make_config
from mnist_dist.tracking.wandb_media import log_stack_dumps
from mnist_dist.tracking.wandb_session import WandbRun
from mnist_dist.train import stacks
from mnist_dist.train.stacks import FLIGHT_RECORDER_FILE, StackDumps, ranks_named


def dumps_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("rank-*.txt"))


# A training process in small: the dumper first, then a thread made later (as torch's are), then the main
# thread blocked in C for 30 s with the signal blocked (as in a collective: no handler can run there).
BLOCKED = """
import os, select, sys, threading, time
from pathlib import Path
from mnist_dist.train.stacks import StackDumps

with StackDumps("USR2") as dumps:
    dumps.folder = Path(sys.argv[1])
    threading.Thread(target=time.sleep, args=(30,), name="made-later", daemon=True).start()
    print("ready", flush=True)
    read_end, write_end = os.pipe()
    select.select([read_end], [], [], 30)
"""


def wait_until_blocked_in_select(pid: int, timeout: float = 10) -> None:
    """Until the main thread of `pid` sleeps in select (its kernel wait channel: poll_schedule_timeout on
    Linux), so that the signal finds it blocked in C, not still on its way there after printing "ready"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        channel = Path(f"/proc/{pid}/task/{pid}/wchan").read_text()
        if "poll" in channel or "select" in channel:
            return
        time.sleep(0.005)
    pytest.fail(f"process {pid} did not block in select (wait channel {channel!r})")


def test_the_dump_signal_is_answered_by_its_own_thread_while_the_main_thread_is_blocked(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", BLOCKED, tmp_path], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        wait_until_blocked_in_select(process.pid)
        process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not dumps_in(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None  # neither ended by the signal nor released from its wait
    finally:
        process.kill()
        process.wait()
    (dump,) = dumps_in(tmp_path)
    text = dump.read_text()
    assert dump.name.startswith("rank-0-") and "why: SIGUSR2 (--dump-signal); training goes on" in text
    assert "where: start-up, before the first step" in text
    # The main thread is still where it blocked, and the dump was written by the dumper's thread.
    assert "the main thread is in: <module> (<string>:11)" in text  # line 11: the select
    assert "Thread made-later:" in text and "Thread stack-dumps" not in text and "on_late_signal" not in text


def test_after_the_block_the_signal_has_its_previous_handler_and_is_unblocked():
    before = signal.getsignal(signal.SIGUSR2)
    with StackDumps("USR2"):
        assert signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.getsignal(signal.SIGUSR2) == before
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_child_process_leaves_the_dump_signal_pending_instead_of_dying_of_it():
    # SIGUSR2's default action ends a process: a W&B service or DataLoader worker that a signal to every
    # process of the job reaches (scancel --signal) must outlive it.
    with StackDumps("USR2"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    time.sleep(0.3)
    child.send_signal(signal.SIGUSR2)
    assert child.wait(timeout=30) == 0


def test_before_the_run_folder_is_known_a_dump_goes_to_stderr(capsys):
    assert StackDumps().dump("asked") is None
    err = capsys.readouterr().err
    assert err.startswith("stacks of rank 0 of 1, process ") and "why: asked" in err and 'File "' in err


def test_a_dump_that_cannot_be_written_says_one_line_and_raises_nothing(tmp_path, capsys):
    dumps = StackDumps()
    dumps.folder = tmp_path / "a-file"
    dumps.folder.write_text("not a folder")
    assert dumps.dump("asked") is None
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"note: rank 0: cannot write {dumps.folder}/rank-0-")
    assert line.endswith(".txt (File exists); training goes on without this dump.")


def failed_collective() -> RuntimeError:
    def wait_in_collective():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer")

    try:
        wait_in_collective()
    except RuntimeError as error:
        return error


def lost_peer_dumps(folder: Path, rank: int, world: int) -> StackDumps:
    dumps = StackDumps()
    dumps.folder, dumps.rank, dumps.world = folder, rank, world
    dumps.progress = lambda: "step 57, epoch 2"
    return dumps


def test_a_lost_peer_dump_names_the_ranks_that_wrote_none_after_waiting_for_them(tmp_path, monkeypatch):
    monkeypatch.setattr(stacks, "ANSWER_SECONDS", 1.0)
    (tmp_path / "rank-3-20261207-101010-000.txt").write_text("rank 3 answered")
    old = tmp_path / "rank-2-20261201-101010-000.txt"  # a SIGQUIT dump of days ago: not an answer
    old.write_text("long ago")
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    started = time.monotonic()
    said = lost_peer_dumps(tmp_path, 0, 4).after_lost_peer(failed_collective())
    assert time.monotonic() - started >= 1.0  # it waited for ranks 1 and 2
    assert said == f"ranks 1 and 2 did not answer, the stacks of the others are in {tmp_path}"
    (dump,) = [path for path in dumps_in(tmp_path) if path.name.startswith("rank-0-")]
    text = dump.read_text()
    assert "why: a collective failed: another process stopped responding or ended" in text
    assert "where: step 57, epoch 2" in text and "the main thread is in: wait_in_collective (" in text
    assert "where the collective failed: [gloo/transport/tcp/pair.cc:561] Connection closed by peer" in text


def test_a_lost_peer_dump_waits_no_longer_once_every_rank_answered(tmp_path):
    (tmp_path / "rank-1-20261207-101010-000.txt").write_text("rank 1 answered")
    started = time.monotonic()
    said = lost_peer_dumps(tmp_path, 0, 2).after_lost_peer(failed_collective())
    assert time.monotonic() - started < 1 and said.startswith("every rank answered, ")


def test_without_a_run_folder_a_lost_peer_writes_and_says_nothing(capsys):
    assert StackDumps().after_lost_peer(failed_collective()) == ""
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "ranks, said",
    [([1], "rank 1"), ([1, 3], "ranks 1 and 3"), ([1, 3, 5], "ranks 1, 3 and 5"), (list(range(10)), None)],
)
def test_ranks_are_named_in_a_short_phrase(ranks, said):
    assert ranks_named(ranks) == (said or "ranks 0, 1, 2, 3, 4, 5, 6, 7 and 2 more")


def resolved(run_dir: Path, **values):
    return make_config({"run_dir": str(run_dir), **values})


@pytest.fixture
def no_recorder_file(monkeypatch):
    """Neither flight recorder variable set, and whatever the job sets undone after the test."""
    for name in FLIGHT_RECORDER_FILE:
        monkeypatch.setenv(name, "restored after the test")
        monkeypatch.delenv(name)


def test_on_a_gpu_the_flight_recorder_writes_into_the_run_folder_which_is_tidied_when_empty(tmp_path, no_recorder_file):
    dumps = StackDumps()
    dumps.follow(resolved(tmp_path / "run"), "cuda")
    prefix = Path(os.environ[FLIGHT_RECORDER_FILE[0]])
    assert prefix == (tmp_path / "run" / "stacks" / "flight-recorder" / "nccl_trace_rank_") and prefix.parent.is_dir()
    assert dumps.written() is None  # an empty folder is nothing written
    dumps.tidy()
    assert not (tmp_path / "run" / "stacks").exists()


def test_a_chosen_flight_recorder_file_is_kept_and_the_cpu_makes_no_folder(tmp_path, monkeypatch, no_recorder_file):
    monkeypatch.setenv(FLIGHT_RECORDER_FILE[1], "/shared/traces/rank_")
    StackDumps().follow(resolved(tmp_path / "gpu"), "cuda")
    monkeypatch.delenv(FLIGHT_RECORDER_FILE[1])
    StackDumps().follow(resolved(tmp_path / "cpu"), "cpu")
    assert os.environ.get(FLIGHT_RECORDER_FILE[0]) is None and not list(tmp_path.iterdir())


def test_a_dry_run_dumps_to_stderr_and_a_written_folder_is_kept(tmp_path):
    dumps = StackDumps()
    dumps.follow(resolved(tmp_path / "dry", dry_run=True), "cpu")
    assert dumps.folder is None
    dumps.follow(resolved(tmp_path / "run"), "cpu")
    path = dumps.dump("asked")
    assert path.parent == tmp_path / "run" / "stacks" and dumps.written() == path.parent
    dumps.tidy()
    assert path.exists()


class FailingWandb:
    """A wandb whose artifacts cannot be made (a full disk, a broken install): the failure W&B must absorb."""

    class Artifact:
        def __init__(self, *args, **kwargs):
            raise OSError("No space left on device")


class FinishedRun:
    id, project, entity = "abc123", "mnist-dist", "someone"

    def finish(self, exit_code=0):
        pass


def test_uploading_the_dumps_never_costs_the_run(tmp_path):
    log_stack_dumps(None, tmp_path)  # W&B off or not installed, or another rank
    said = []
    tracked = WandbRun(FailingWandb, FinishedRun(), None, -1, said.append)
    log_stack_dumps(tracked, None)  # nothing written
    assert said == [] and tracked.live
    log_stack_dumps(tracked, tmp_path)
    failed = "W&B disabled: uploading the stack dumps failed (OSError: No space left on device)"
    assert said == [f"{failed}; training goes on without it."]
    assert not tracked.live
