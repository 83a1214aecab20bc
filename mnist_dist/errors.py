"""How a run ends when it does not finish. Entry points print the message as one line (no
traceback) and exit with the class's exit code:

    0  finished
    1  crashed (a bug or a failure of the machine: a traceback is printed)
    2  bad input: a flag, a config file, a dataset file, a checkpoint (UserError)
    3  stopped by a --stop-signals signal (SIGUSR1, SIGTERM, Ctrl-C): after a checkpoint, before the first step or
       after the final files; run again to resume (Preempted)
    4  the loss became NaN or infinite; the last good checkpoint is kept (Diverged)
    5  another process stopped responding or ended; the last complete checkpoint is kept (LostProcess)
  130  a second Ctrl-C, or a Ctrl-C that --stop-signals leaves out: no new checkpoint (Interrupted)

Also the two helpers every such message uses, `first_line` and `did_you_mean`; how the message
reaches the user once per job (`report_error`); and where the full traceback of an unexpected error
goes (`write_error_log`).
"""

import datetime
import difflib
import fcntl
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import IO


class UserError(Exception):
    """Bad input: a flag, a config file, a dataset file, a checkpoint. The message names the fix."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid option value, an unknown key, or an unreadable config file."""

    same_on_every_rank = True  # every rank parses the same command line (report_error says it once)


class DatasetError(UserError):
    """Dataset files that are missing, corrupt, or cannot be downloaded."""


class Preempted(Exception):
    """A stop signal arrived; every rank finished its step and a checkpoint was written (or, before the
    first step, there was nothing to write; during the final files, they were finished first)."""

    exit_code = 3
    same_on_every_rank = True  # the ranks agreed on it (train/agreement.py)


class Diverged(Exception):
    """The training loss became NaN or infinite."""

    exit_code = 4
    same_on_every_rank = True  # the ranks agreed on it (train/agreement.py)


class LostProcess(Exception):
    """A collective failed: another process stopped responding (--collective-timeout) or ended."""

    exit_code = 5


class Interrupted(Exception):
    """A Ctrl-C that is not a stop request (SIGINT left out of --stop-signals, or before the options were read)."""

    exit_code = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C
    same_on_every_rank = True  # Ctrl-C reaches every rank from the terminal


STOPS = (UserError, Preempted, Diverged, LostProcess)


def first_line(error: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name when it says nothing."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def did_you_mean(value: str, choices: Iterable[str], quote: str = "'") -> str:
    """ " Did you mean 'x'?" for the closest of `choices` to a mistyped `value`, or "" when none is close."""
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" Did you mean {quote}{close[0]}{quote}?" if close else ""


def report_error(error: Exception) -> None:
    """Print the one-line message. Config errors, stop signals, a diverged loss and what the ranks
    agreed on (same_on_every_rank) happen on every rank alike: they are said once (say_once). Other
    errors (a file missing on one node) can be one rank's own, so each rank says its own, a rank
    other than 0 naming itself."""
    rank = int(os.environ.get("RANK", "0"))
    if getattr(error, "same_on_every_rank", False):
        say_once(f"error: {error}")
    elif rank == 0:
        print(f"error: {error}", file=sys.stderr, flush=True)
    else:
        print(f"error: rank {rank}: {error}", file=sys.stderr, flush=True)


# A rank holds the marker's lock for one print. One held longer is stopped (SIGSTOP, swapped out):
# the others then say the line themselves.
LOCK_WAIT_SECONDS = 5.0


def say_once(line: str) -> None:
    """Print `line` to stderr unless another rank of this launcher has printed it: the first rank to
    get here says it, whichever that is.

    Not "rank 0 says it": a launcher ends the other ranks as soon as one exits with an error
    (torchrun and accelerate launch send SIGTERM, srun --kill-on-bad-exit kills the step), so a rank
    0 slower than rank 1 (cold imports on a loaded node) was ended before it printed, and the user
    saw no `error:` line at all (issue 26). Here a rank exits only after the line is on stderr, by
    itself or by another, and a launcher acts only on an exit: the line is out before anyone is
    ended. The ranks share a marker file (launcher_marker) under an exclusive lock: read it, print
    unless it holds the line, add the line (a torchrun restart may meet another line). A rank ended
    between its print and its mark leaves the lock free and the line unmarked, so the next one says
    it again: twice at worst, never not at all.
    """
    marker = launcher_marker()
    try:
        file = open(marker, "a+") if marker else None  # created if missing, never truncated
    except OSError:
        file = None
    if file is None:  # one process, or nothing to share: say it
        print(line, file=sys.stderr, flush=True)
        return
    with file:  # closing releases the lock
        lock_within(file, LOCK_WAIT_SECONDS)
        file.seek(0)
        if line in file.read().split("\0"):  # lines said so far, each ended by a NUL (a line may hold newlines)
            return
        print(line, file=sys.stderr, flush=True)
        file.write(line + "\0")
        file.flush()


def lock_within(file: IO, seconds: float) -> None:
    """Take `file`'s exclusive lock, waiting at most `seconds`; past them, go on without it."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def launcher_marker() -> Path | None:
    """The file the ranks of one launcher process share: None for a single process.

    Every launcher starts its ranks on a node as its own children: torchrun's agent, accelerate
    launch, srun's slurmstepd (the ranks exec Python). Those ranks share its terminal, so the file
    is keyed by that parent: boot, pid and start time name it uniquely, and a marker left by an
    earlier job can never silence a later one. Without /proc (not Linux) there is no such key and
    every rank says the line: twice beats never. srun on several nodes prints once per node, since
    nodes share no folder before the run's own exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    launcher = os.getppid()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        # Field 22 of stat, the start time in clock ticks after boot; counted after the name, which may hold spaces.
        started = Path(f"/proc/{launcher}/stat").read_text().rsplit(")", 1)[1].split()[19]
        folder = Path(tempfile.gettempdir()) / f"mnist-dist-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.is_symlink() or folder.stat().st_uid != os.getuid():  # another user's: not ours to trust
            return None
    except (OSError, IndexError):
        return None
    forget_old_markers(folder)
    return folder / f"error-said-{boot}-{launcher}-{started}"


MARKER_DAYS = 1  # a marker matters only while its job's ranks are ending: seconds; a day is ample


def forget_old_markers(folder: Path) -> None:
    """Delete markers of jobs that ended long ago, so that the folder does not grow with every failed job."""
    oldest = time.time() - MARKER_DAYS * 86400
    for marker in folder.glob("error-said-*"):
        try:
            if marker.stat().st_mtime < oldest:
                marker.unlink()
        except OSError:  # another rank deleted it first
            pass


def write_error_log(run_dir: Path, rank: int, error: BaseException) -> Path | None:
    """Write the full traceback of an unexpected `error` (with its causes) to run_dir/error-rank-<rank>.log,
    atomically, so that a one-line message never costs the evidence; its path, or None when it cannot
    be written. Raises nothing of its own: it runs while `error` is already on its way out."""
    from mnist_dist.atomic import write_atomically  # here, not at the top: atomic.py imports this module

    path = Path(run_dir) / f"error-rank-{rank}.log"
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    header = f"{when} rank {rank}, process {os.getpid()} on {socket.gethostname()}\n"
    try:  # into the run's folder only where it exists: no folder is made for a run that never started
        write_atomically(path, header + "".join(traceback.format_exception(error)))
    except Exception:  # any failure to write: the one-line message still says what happened
        return None
    return path
