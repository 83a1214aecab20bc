"""One job of bench/chaos.py, the torchrun command it starts again and again, and how a fault reaches
its processes: where it lands (nowhere able to take it, start-up, training), what it sends to whom, how
the job ends, and what it said."""

import contextlib
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil

from bench.runs import REPO

# Where a fault landed when no process could take it, or it came too late to interrupt the job.
NOT_COUNTED = ("before any process could be hit", "before the signal handlers", "after the job ended")
NOT_COUNTED += ("the job finished anyway",)
PROGRESS = "% (step "  # a progress line: the job has trained a step
WORKER_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")  # torchrun's failure report; torchrun itself exits 1


class Job:
    """One torchrun command and its log. Its processes carry a tag in their environment: torchrun starts
    each worker in a session of its own, and a worker whose torchrun was killed trains on."""

    def __init__(self, command: list[str], log: Path, tag: str):
        self.log, self.tag = log, tag
        with log.open("w") as out:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "CHAOS_JOB": tag}
            self.process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=out, env=env)

    def workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
            return [p for p in children if "train.py" in " ".join(p.cmdline())]
        except psutil.Error:  # torchrun has ended, or a worker ended while looked at
            return []

    def text(self) -> str:
        return self.log.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        """SIGKILL every process of the job that is left (or all of them: the fault "kill the job")."""
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):  # ended meanwhile, or a zombie
                if process.environ().get("CHAOS_JOB") == self.tag:
                    process.kill()


def wait_until(ready, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)


def handles_sigterm(process: psutil.Process) -> bool:
    """/proc's SigCgt mask: before train.py installs its handler, SIGTERM ends the process silently."""
    with contextlib.suppress(OSError):  # it has ended
        mask = next(line for line in Path(f"/proc/{process.pid}/status").open() if line.startswith("SigCgt"))
        return bool(int(mask.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def landing(fault: str, job: Job, ranks: list[psutil.Process]) -> str:
    """Where a fault sent now lands: nowhere able to take it, start-up (no step trained yet), or training."""
    if not job.running():
        return "after the job ended"
    if not ranks:
        return "before any process could be hit"
    stops = ("SIGTERM one rank", "SIGTERM at start-up", "Ctrl-C")  # train.py installs their handlers together
    if fault in stops and not all(handles_sigterm(rank) for rank in ranks):
        return "before the signal handlers"
    return "training" if PROGRESS in job.text() else "start-up"


def inject(fault: str, job: Job) -> tuple[str, psutil.Process | None]:
    """Send `fault` to the running job; returns where it landed, and a stopped process to continue later."""
    ranks = job.workers()
    landed = landing(fault, job, ranks)
    if not ranks:
        job.end()  # no process to send it to: the round ends here, its fault not counted
        return landed, None
    target = random.choice(ranks)
    actions = {
        "kill one rank": target.kill,
        "kill the job": job.end,
        "SIGTERM one rank": lambda: target.send_signal(signal.SIGTERM),
        "SIGTERM at start-up": lambda: [rank.send_signal(signal.SIGTERM) for rank in ranks],  # as SLURM does
        # To torchrun and its workers, as a terminal's Ctrl-C; torchrun forwards its copy a moment later,
        # which train.py takes for the same Ctrl-C (train/signals.py).
        "Ctrl-C": lambda: [p.send_signal(signal.SIGINT) for p in (psutil.Process(job.process.pid), *ranks)],
        "SIGSTOP one rank": target.suspend,
    }
    with contextlib.suppress(psutil.NoSuchProcess):  # one ended meanwhile: the others still get it
        actions[fault]()
    return landed, target if fault == "SIGSTOP one rank" else None


def exit_code(job: Job, stopped: psutil.Process | None = None, seconds: float = 180) -> int | None:
    """The job's exit code (None: it did not end in `seconds`, and was killed)."""
    try:
        return job.process.wait(timeout=60 if stopped is not None else seconds)
    except subprocess.TimeoutExpired:
        if stopped is not None:
            # No collective waits on it (the others had finished, or had left after the timeout): a
            # stopped process never ends by itself, so continue it, as an operator would.
            stopped.resume()
            return exit_code(job, None, seconds)
        return None
    finally:
        job.end()  # nothing of this job may outlive it


def outcome(fault: str, landed: str, code: int | None, job: Job, **facts) -> dict:
    """What a fault did: the job's exit code, its workers' (torchrun's report), its error and warning lines."""
    lines = dict.fromkeys(line[:200] for line in re.findall(r"(?m)^\W*((?:error|warning): .*)$", job.text()))
    exits = sorted({int(code) for code in WORKER_EXIT.findall(job.text())})
    return {"fault": fault, "landed": landed, "exit_code": code, "worker_exits": exits, "said": [*lines], **facts}
