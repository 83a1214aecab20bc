"""One job per run directory: a lock file that works on the shared filesystems clusters use.

`fcntl` locks are unreliable on NFS and Lustre, so the lock is a file created with O_EXCL (atomic on
both) in the run directory, `.lock`, holding who holds it: host, pid, SLURM job id, and a heartbeat
time that a thread of the holder refreshes every HEARTBEAT_SECONDS. A second job finds it and stops
at once, naming the holder, before it writes anything. A lock left behind is taken over, with a
warning, when its holder is gone:
- the same host, and the holder's process no longer exists (a crash, SIGKILL, a torchrun restart);
- the same SLURM job id as this job's (SLURM requeued the job; its earlier run is over);
- or its heartbeat is older than STALE_SECONDS (the holder's node died).
"""

import json
import os
import socket
import threading
import time
from pathlib import Path

from mnist_dist.atomic import WriteFailed, write_atomically
from mnist_dist.errors import ConfigError

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 30  # how often the holder refreshes its heartbeat
STALE_SECONDS = 300  # a heartbeat this old means the holder is gone (10 missed refreshes)


class RunInUse(ConfigError):
    """Another job holds the run directory. The same on every rank: rank 0 says it once."""


def holder_facts() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
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
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # after "pid (command)"
    except (OSError, IndexError):
        return True  # no /proc (macOS): the process exists
    return state not in ("Z", "X")


def why_stale(holder: dict) -> str | None:
    """Why a lock's holder is gone, or None while it may still run."""
    me = holder_facts()
    if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not process_exists(holder["pid"]):
        return f"its process {holder['pid']} on {me['host']} has ended"
    if me["slurm_job_id"] and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return f"it is this SLURM job's ({me['slurm_job_id']}) earlier run, before a requeue"
    age = time.time() - float(holder.get("heartbeat", 0) or 0)
    if age > STALE_SECONDS:
        return f"its heartbeat is {age:.0f} s old (more than {STALE_SECONDS} s)"
    return None


def describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{job}"


class RunLock:
    """The main process's hold on a run directory; `release()` at exit. Other ranks hold nothing."""

    def __init__(self, run_dir: Path, say=print):
        self.path = run_dir / LOCK_FILE
        self.say = say
        # The folders this job makes, deepest first: a job that fails before training removes them again.
        self.made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._create():
            holder = self._read()
            if holder is None:
                continue  # released or taken over between our two looks: try again
            reason = why_stale(holder)
            if reason is None:
                raise RunInUse(
                    f"run directory {self.path.parent} is in use by {describe(holder)} (its lock {self.path}); "
                    "wait for that job, or pass another --run-name or --run-dir."
                )
            self.say(f"warning: taking over the lock of {self.path.parent}: {reason}.")
            self._take_over(holder)
        self.thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self.thread.start()

    def _create(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(holder_facts()) + "\n")
        return True

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            holder = {}  # half-written by a holder that died while creating it: its heartbeat counts as 0
        return holder if isinstance(holder, dict) else {}

    def _take_over(self, stale: dict) -> None:
        """Move the stale lock aside (one rename: of two jobs taking over, one wins), then create ours."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another job moved it first; the loop looks again
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved and moved != stale:  # a job took it over between our look and the rename: give it back
            try:
                os.link(aside, self.path)  # fails if a third job has a lock there already
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                write_atomically(self.path, json.dumps(holder_facts()) + "\n")
            except WriteFailed:
                pass  # a full disk or a network hiccup; the next beat tries again

    def release(self) -> None:
        """Drop the lock; remove the run directory too (and the folders above it) if this job made it and
        wrote nothing else."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.path.unlink(missing_ok=True)
        for folder in self.made:
            try:
                folder.rmdir()  # only while empty
            except OSError:
                break
