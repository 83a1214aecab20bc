"""One job per run directory: a lock file that works on the shared filesystems clusters use.

`fcntl` locks are unreliable on NFS and Lustre, so the lock is a file in the run directory, `.lock`,
holding who holds it: host, pid, the process's start time, SLURM job id, and a heartbeat time that a
thread of the holder refreshes every HEARTBEAT_SECONDS. A lock never exists without these facts: they
are written to a file of a unique name, which is then hard-linked as `.lock` (the link fails if a lock
exists, atomically, on NFS and Lustre too) and unlinked. A second job finds the lock and stops at once,
naming the holder, before it writes anything. A lock left behind is taken over, with a warning, when its
holder is gone:
- the same host, and the holder's process no longer exists (a crash, SIGKILL, a torchrun restart);
- the same SLURM job id as this job's (SLURM requeued the job; its earlier run is over);
- or its heartbeat is older than STALE_SECONDS (the holder's node died).
A holder whose process runs on this host is never gone, whatever its heartbeat: a job stopped with
Ctrl-Z (SIGSTOP) for an hour trains on when it is continued. A lock that is empty or cannot be read (an
older version's, between its create and its write, or a damaged one) counts as held until the file
itself is STALE_SECONDS old (its mtime), never as a heartbeat of 0.
"""

import json
import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from mnist_dist.atomic import WriteFailed, write_atomically
from mnist_dist.errors import ConfigError

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 30  # how often the holder refreshes its heartbeat
STALE_SECONDS = 300  # a heartbeat this old means the holder is gone (10 missed refreshes)
IDENTITY = ("host", "pid", "started")  # the facts that name the holding process; the others change


class RunInUse(ConfigError):
    """Another job holds the run directory. The same on every rank: rank 0 says it once."""


def process_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after "PID (command)", from the state on; None once the process has
    gone, or without /proc (macOS)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_started(pid: int) -> int | None:
    """When `pid` started, in clock ticks since the host booted (stat's field 22). With the pid it names
    one process: a pid is reused once its process ends, its start time is not."""
    fields = process_stat(pid)
    return int(fields[19]) if fields else None


def holder_facts() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": process_started(os.getpid()),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "heartbeat": time.time(),
    }


def process_exists(pid: int) -> bool:
    """Whether `pid` runs: it exists and is not a zombie (ended, waiting for its parent to reap it)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    fields = process_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")  # no /proc (macOS): it exists


def runs_here(holder: dict) -> bool | None:
    """Whether the holder's process runs, when it ran on this host; None for another host's holder.

    A lock without a start time (an older version's), or a host without /proc, leaves the pid alone to
    name the process: a pid reused by another process of this host then keeps the lock held until that
    process ends. The user sees the refusal naming the pid and host, and `ps` shows it is no training
    job; that errs on the safe side, never two jobs training into one folder.
    """
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    if not process_exists(pid):
        return False
    return holder.get("started") is None or process_started(pid) in (None, holder["started"])


def why_stale(holder: dict, *, own_slurm_job: bool = True) -> str | None:
    """Why a lock's holder is gone, or None while it may still run. `own_slurm_job`: whether a holder of
    this process's SLURM job counts as gone: yes for a job that would train (SLURM requeued it), not for
    a reader that may run beside the holder in the same allocation."""
    here = runs_here(holder)
    if here:
        return None  # alive on this host: stopped (Ctrl-Z) or slow, it trains on when it continues
    if here is False:
        return f"its process {holder['pid']} on {holder['host']} has ended"
    job = os.environ.get("SLURM_JOB_ID")
    if own_slurm_job and job and holder.get("slurm_job_id") == job:
        return f"it is this SLURM job's ({job}) earlier run, before a requeue"
    age = time.time() - float(holder["heartbeat"])
    if age <= STALE_SECONDS:
        return None
    if holder.get("unreadable"):
        return f"it is empty or unreadable and was last written {age:.0f} s ago (more than {STALE_SECONDS} s)"
    return f"its heartbeat is {age:.0f} s old (more than {STALE_SECONDS} s)"


def describe(holder: dict) -> str:
    """Who holds a lock, for a user: 'process 4242 on node7, SLURM job 99'."""
    if holder.get("unreadable"):
        return "an unknown job (its lock is empty or unreadable)"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    fields = process_stat(holder["pid"]) if runs_here(holder) else None
    stopped = ", stopped (continue it with fg or kill -CONT, or end it)" if fields and fields[0] in ("T", "t") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{job}{stopped}"


def read_lock(path: Path) -> dict | None:
    """The holder's facts in the lock at `path`, or None when there is none. A lock that is empty or
    cannot be read gets `unreadable` and its file's mtime as heartbeat: it counts as held while fresh."""
    try:
        modified = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no permission, an I/O error
        text = ""
    try:
        facts = json.loads(text)
    except ValueError:
        facts = None
    if not isinstance(facts, dict):
        return {"host": None, "pid": None, "slurm_job_id": None, "heartbeat": modified, "unreadable": True}
    heartbeat = facts.get("heartbeat")
    if not isinstance(heartbeat, (int, float)) or not math.isfinite(heartbeat):  # missing, or NaN in a damaged file
        facts["heartbeat"] = modified
    return facts


def live_holder(run_dir: Path) -> dict | None:
    """The facts of the job holding run_dir's lock, or None when there is no lock or its holder is gone
    (why_stale says so)."""
    try:
        holder = read_lock(run_dir / LOCK_FILE)
    except OSError:
        return None  # not even its file's facts can be read: the caller's own reads will say why
    if holder is None or why_stale(holder, own_slurm_job=False):
        return None
    return holder


class RunLock:
    """The main process's hold on a run directory; `release()` at exit. Other ranks hold nothing."""

    def __init__(self, run_dir: Path, say=print):
        self.path = run_dir / LOCK_FILE
        self.say = say
        # The folders this job makes, deepest first: a job that fails before training removes them again.
        self.made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
        # Unique among every job of every host: the names of this job's temporary files beside the lock.
        self.token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunInUse naming its live holder. A failed write (an OSError: a full
        disk) leaves nothing behind: no lock, no temporary file, none of the folders this job made."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while not self._create():
                holder = read_lock(self.path)
                if holder is None:
                    continue  # released or taken over between our two looks: try again
                reason = why_stale(holder)
                if reason is None:
                    raise self._refusal(holder)
                self.say(f"warning: taking over the lock of {self.path.parent}: {reason}.")
                self._take_over(holder)
        except OSError:
            self._remove_made()
            raise
        self.thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self.thread.start()

    def _refusal(self, holder: dict) -> RunInUse:
        if holder.get("unreadable"):
            age = time.time() - holder["heartbeat"]
            who = f"a job whose lock {self.path} is empty or unreadable, written {age:.0f} s ago"
            who += f" (held until it is {STALE_SECONDS} s old)"
        else:
            who = f"{describe(holder)} (its lock {self.path})"
        return RunInUse(
            f"run directory {self.path.parent} is in use by {who}; wait for that job, or pass another --run-name "
            "or --run-dir."
        )

    def _create(self) -> bool:
        """Create the lock with this job's facts in it from its first moment; False if a lock exists."""
        temporary = self.path.with_name(f"{LOCK_FILE}-{self.token}.tmp")
        try:
            descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(descriptor, "w") as file:
                file.write(json.dumps(holder_facts()) + "\n")
                file.flush()
                os.fsync(file.fileno())  # on the server before it is the lock: readers on other hosts see it whole
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                # NFS may answer a retried link "exists" although its first try made it: then the temporary
                # has two names (the open(2) manual's advice for lock files on NFS).
                return os.stat(temporary).st_nlink == 2
            return True
        finally:
            temporary.unlink(missing_ok=True)  # also after a failed write: it may hold the last free blocks

    def _take_over(self, stale: dict) -> None:
        """Move the stale lock aside (one rename: of two jobs taking over, one wins), then let the loop
        create ours. A lock that changed since `stale` was read (its holder beat, or another job took it
        over) is put back."""
        aside = self.path.with_name(f"{LOCK_FILE}-{self.token}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another job moved it first; the loop looks again
        try:
            if read_lock(aside) != stale:
                os.link(aside, self.path)
        except FileExistsError:
            pass  # a third job has created a lock there already
        finally:
            aside.unlink(missing_ok=True)

    def _taken_by(self) -> dict | None:
        """The holder that took this job's lock over (this job was thought gone), or None."""
        try:
            holder = read_lock(self.path)
        except OSError:
            return None  # the next look may see it
        mine = holder_facts()
        if holder is None or holder.get("unreadable") or all(holder.get(key) == mine[key] for key in IDENTITY):
            return None  # unreadable: a failed read (EIO, ESTALE) is no proof that another job holds it
        return holder

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            taker = self._taken_by()
            if taker is not None:  # never overwrite the lock of the job that took it
                self.say(
                    f"warning: {describe(taker)} took over the lock of {self.path.parent}, taking this job for gone; "
                    "two jobs now write there: stop this one."
                )
                return
            try:
                write_atomically(self.path, json.dumps(holder_facts()) + "\n")
            except WriteFailed:
                pass  # a full disk or a network hiccup; the next beat tries again

    def release(self) -> None:
        """Drop the lock, unless another job took it over; remove the run directory too (and the folders
        above it) if this job made it and wrote nothing else."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if self._taken_by() is None:
            self.path.unlink(missing_ok=True)
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in self.made:
            try:
                folder.rmdir()  # only while empty
            except OSError:
                break
