"""How a run that does not finish tells the user: one `error:` line per job from whichever rank gets there
first, the full traceback of an unexpected error in the run folder, and a lost peer told from a bug."""

import fcntl
import os
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from helpers import REPO

from mnist_dist import errors
from mnist_dist.distributed import lost_peer
from mnist_dist.errors import ConfigError, DatasetError, report_error, write_error_log

# Starts RANKS ranks as its children, as a launcher does; each reports the same config error.
LAUNCHER = """
import os, subprocess, sys
rank_code = "from mnist_dist.errors import ConfigError, report_error; report_error(ConfigError('unknown optimizer'))"
ranks = [
    subprocess.Popen([sys.executable, "-c", rank_code], env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"})
    for rank in range(2)
]
sys.exit(max(rank.wait() for rank in ranks))
"""


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """A temporary folder of this test's own, where the ranks' marker goes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


def launch(temp_dir) -> str:
    """stderr of one job of two real ranks, started together by a launcher process of its own."""
    environment = {"PYTHONPATH": str(REPO), "TMPDIR": str(temp_dir), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER], env=environment, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stderr


def test_the_ranks_of_a_job_say_an_error_of_every_rank_once_and_each_job_says_it_again(temp_dir):
    for _ in range(2):  # a second job of the same command is not silenced by the first one's marker
        assert launch(temp_dir).splitlines() == ["error: unknown optimizer"]


def test_the_first_rank_to_get_there_says_it_whichever_rank_that_is(temp_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # first: the launcher may end rank 0 as soon as rank 1 exits
    report_error(ConfigError("unknown optimizer 'sgdd'"))
    assert capsys.readouterr().err.splitlines() == ["error: unknown optimizer 'sgdd'"]
    monkeypatch.setenv("RANK", "0")
    report_error(ConfigError("unknown optimizer 'sgdd'"))
    assert capsys.readouterr().err == ""


def test_a_rank_that_holds_the_marker_and_never_lets_go_silences_no_one(temp_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(errors, "LOCK_WAIT_SECONDS", 0.2)
    with open(errors.launcher_marker(), "a+") as held:  # a rank stopped (SIGSTOP) while it holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        report_error(ConfigError("unknown optimizer 'sgdd'"))
    assert capsys.readouterr().err.splitlines() == ["error: unknown optimizer 'sgdd'"]


def test_markers_of_jobs_that_ended_long_ago_are_forgotten(tmp_path):
    old, new = tmp_path / "error-said-old", tmp_path / "error-said-new"
    for marker in (old, new):
        marker.write_text("error: x\0")
    long_ago = time.time() - 2 * 86400
    os.utime(old, (long_ago, long_ago))
    errors.forget_old_markers(tmp_path)
    assert not old.exists() and new.exists()


def test_an_error_of_one_rank_is_said_by_that_rank_naming_itself(temp_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        report_error(DatasetError("train-images-idx3-ubyte is truncated"))
    assert capsys.readouterr().err.splitlines() == [
        "error: train-images-idx3-ubyte is truncated",
        "error: rank 1: train-images-idx3-ubyte is truncated",
    ]


def failed_with_a_cause() -> ValueError:
    try:
        try:
            raise KeyError("conv1.weight")
        except KeyError as cause:
            raise ValueError("the checkpoint does not fit the model") from cause
    except ValueError as error:
        return error


def test_the_error_log_holds_the_whole_traceback_and_its_cause(tmp_path):
    (tmp_path / "run").mkdir()
    path = write_error_log(tmp_path / "run", 1, failed_with_a_cause())
    assert path == tmp_path / "run" / "error-rank-1.log"
    text = path.read_text()
    assert "rank 1" in text.splitlines()[0]
    assert "Traceback" in text and "in failed_with_a_cause" in text
    assert "KeyError: 'conv1.weight'" in text and "ValueError: the checkpoint does not fit the model" in text
    assert sorted(p.name for p in path.parent.iterdir()) == ["error-rank-1.log"]  # no temporary left behind


def test_an_error_log_that_cannot_be_written_is_none_not_a_second_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert write_error_log(blocker / "run", 0, RuntimeError("boom")) is None
    assert write_error_log(tmp_path / "never-made", 0, RuntimeError("boom")) is None  # no folder is made
    assert not (tmp_path / "never-made").exists()


@pytest.fixture
def group():
    """A process group of this process alone: lost_peer answers only inside one."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    "message",
    ["reading the cache timed out", "timeout", "write: Broken pipe", "Connection reset by peer", "Timed out waiting"],
)
def test_a_runtime_error_that_only_says_timed_out_is_a_bug_not_a_lost_peer(group, message):
    assert not lost_peer(RuntimeError(message))


@pytest.mark.parametrize(
    "error",
    [
        torch.distributed.DistBackendError("NCCL watchdog: collective timed out"),
        torch.distributed.DistNetworkError("connection to the store was lost"),
        torch.distributed.DistStoreError("wait timed out"),
        # What gloo 2.14 raised on rank 0 when rank 1 had exited, stopped past the timeout, then the next collective.
        RuntimeError(
            "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
            "[127.0.0.1]:33478. This is typically caused by a remote worker crashing."
        ),
        RuntimeError(
            "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv "
            "operation to complete"
        ),
        RuntimeError(
            "Got the following error when running the callback: RuntimeError: Application timeout caused pair closure"
        ),
    ],
)
def test_torchs_distributed_errors_and_gloos_transport_failures_are_lost_peers(group, error):
    assert lost_peer(error)


def test_outside_a_process_group_nothing_is_a_lost_peer():
    assert not lost_peer(torch.distributed.DistNetworkError("connection to the store was lost"))
