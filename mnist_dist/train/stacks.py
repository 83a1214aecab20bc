"""Stack dumps: what every thread of a rank is doing, its step and what it waits in, written to
RUN/stacks/rank-R-<time>.txt. On demand (--dump-signal, SIGQUIT by default; training goes on, as a
JVM or a Go program does), and when a collective fails for a lost peer (train/job.py: every live rank
writes one before it exits 5, waits ANSWER_SECONDS for the others', and its one line names the ranks
that wrote none: they did not answer).

Why a thread that waits for a blocked signal, not a signal handler: Python runs a handler only in the
main thread, between two bytecodes, and a rank blocked in a collective (the case that matters: a hung
job) sits in C for up to --collective-timeout; it would answer only once the collective returns. So
the train command blocks the dump signal (pthread_sigmask) first thing, while its main thread is its
only thread (commands.train, before torch loads), and every thread made later (torch's, gloo's,
NCCL's, W&B's) inherits the mask. A daemon thread takes the signal with sigwait and writes the dump
at once: the main thread releases the GIL while it waits in a collective, and its frames then show
that collective (sys._current_frames). A Python handler stays installed too: a thread that unblocks
the signal for itself would take it, and the dump then comes late (from the main thread) instead of
the default action (SIGQUIT's: a core dump) ending the process.

Child processes inherit the mask (exec keeps it): DataLoader workers, the W&B service and
torch.compile's workers leave the signal pending instead of dying of it, which is what a signal to
every process of a job (`scancel --signal=QUIT`, docs/SLURM.md) needs.

The job tells the dumper where it stands (follow, follow_state): the run folder once it is this job's
(before that, or in a dry run, a dump goes to stderr) and the step. On a GPU the folder also takes
PyTorch's NCCL flight recorder files (point_flight_recorder). The stop signals (train/signals.py)
are others: config.py refuses a dump signal that is also a stop signal.
"""

import datetime
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_dist.atomic import WriteFailed, write_atomically, writing
from mnist_dist.config import Config
from mnist_dist.errors import first_line

if TYPE_CHECKING:  # a type only: this module loads before torch (commands.train)
    from mnist_dist.checkpoint.state import TrainingState

# How long a rank that lost a peer waits for the other ranks' dumps; a rank counts as answered when
# its dump is written within this many seconds of this rank's. The live ranks wait in the same
# collective (the lost one holds them all up), so their timeouts fire close together.
ANSWER_SECONDS = 5.0
DUMP_FILE = re.compile(r"rank-(\d+)-.*\.txt$")
# The flight recorder's dump file, a prefix to which PyTorch adds the rank (torch 2.14 reads the first
# name, older versions the second); read when the dump is written, so the job may set it late.
FLIGHT_RECORDER_FILE = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")
FLIGHT_RECORDER_FOLDER = "flight-recorder"
NOT_WRITTEN = "training goes on without this dump"  # a failed write's fix, in its one line (atomic.py)
LOST_PEER = "a collective failed: another process stopped responding or ended (--collective-timeout)"
NOT_SHOWN = "threads that run no Python code (gloo's, NCCL's, OpenMP's) have no Python stack and are not shown"


class StackDumps:
    """Inside `with`: the dump signal blocked and waited for by a thread of its own. Outside (or with
    the signal "none"), dumps are still written when the job asks (a lost peer)."""

    def __init__(self, signal_name: str = "none"):
        self.number = None if signal_name == "none" else signal.Signals[f"SIG{signal_name}"]
        self.rank = int(os.environ.get("RANK", "0"))  # every launcher sets them before the process starts
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.folder: Path | None = None  # RUN/stacks once the run folder is this job's; None: stderr
        self.progress: Callable[[], str] = lambda: "start-up, before the first step"
        self.since = time.time()  # dumps newer than this are this job's
        # One dump at a time: a signal during a lost peer's dump waits. Re-entrant: the late handler runs
        # in the main thread, possibly while that thread itself is inside a dump.
        self.lock = threading.RLock()
        self.listener: threading.Thread | None = None
        self.previous = None  # the signal's handler before ours
        self.closing = False

    def __enter__(self) -> "StackDumps":
        if self.number is not None and threading.current_thread() is threading.main_thread():
            signal.pthread_sigmask(signal.SIG_BLOCK, {self.number})
            self.previous = signal.signal(self.number, self.on_late_signal)
            self.listener = threading.Thread(target=self.listen, name="stack-dumps", daemon=True)
            self.listener.start()
        return self

    def listen(self) -> None:
        while True:
            signal.sigwait({self.number})
            if self.closing:
                return
            self.on_signal()

    def on_late_signal(self, number, frame) -> None:
        self.on_signal()

    def on_signal(self) -> None:
        name = signal.Signals(self.number).name
        path = self.dump(f"{name} (--dump-signal); training goes on")
        if path is not None:
            say(f"note: rank {self.rank} wrote its stacks to {path} ({name}, --dump-signal); training goes on.")

    def __exit__(self, *exc) -> None:
        if self.listener is None:
            return
        self.closing = True
        signal.pthread_kill(self.listener.ident, self.number)  # ends its sigwait
        self.listener.join()
        # Unblocked first: a signal still pending goes to our handler, not to the default action.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {self.number})
        signal.signal(self.number, self.previous)
        self.listener = None

    def follow(self, config: Config, device_type: str) -> None:
        """The run folder is this job's (it holds the lock): dumps go to RUN/stacks from now on."""
        if config.writes_files:
            self.folder = config.run_path / "stacks"  # as the run folder is spelled in the messages
            if device_type == "cuda":
                self.point_flight_recorder()

    def follow_state(self, state: "TrainingState") -> None:
        """The trainer is made: dumps say its step and epoch (read as they are written)."""
        self.progress = lambda: f"step {state.step}, epoch {state.epoch}"

    def point_flight_recorder(self) -> None:
        """PyTorch's NCCL flight recorder writes its dump on a timeout into RUN/stacks/flight-recorder/
        (nccl_trace_rank_<rank>), unless the environment chose a file; PyTorch does not make the folder."""
        if any(name in os.environ for name in FLIGHT_RECORDER_FILE):
            return
        folder = self.folder / FLIGHT_RECORDER_FOLDER
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # PyTorch's default place then (its cache folder); the run goes on
        os.environ[FLIGHT_RECORDER_FILE[0]] = str(folder.absolute() / "nccl_trace_rank_")

    def dump(self, why: str, error: BaseException | None = None) -> Path | None:
        """Write this rank's stacks now (`error`: the failed collective, whose traceback is the main
        thread's stack); the file, or None when it went to stderr or could not be written. Never raises."""
        with self.lock:
            text = self.report(why, error)
            if self.folder is None:
                say(text)
                return None
            now = datetime.datetime.now()
            path = self.folder / f"rank-{self.rank}-{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}.txt"
            try:
                with writing(path, NOT_WRITTEN):
                    self.folder.mkdir(parents=True, exist_ok=True)
                write_atomically(path, text, NOT_WRITTEN)
            except WriteFailed as failure:  # a full disk: the note says so, training goes on
                say(f"note: rank {self.rank}: {failure}")
                return None
            return path

    def report(self, why: str, error: BaseException | None) -> str:
        """The dump's text: who, why, where training stands, what the main thread waits in, every stack."""
        frames = sys._current_frames()
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        main = threading.main_thread().ident
        if error is not None:  # written by the main thread after the collective failed: where it failed
            stack, title = (
                traceback.extract_tb(error.__traceback__),
                f"where the collective failed: {first_line(error)}",
            )
        else:
            stack, title = traceback.extract_stack(frames[main]), "now"
        when = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
        lines = [
            f"stacks of rank {self.rank} of {self.world}, process {os.getpid()} on {socket.gethostname()}, {when}",
            f"why: {why}",
            f"where: {self.progress()}",
            f"the main thread is in: {waits_in(stack)}",
            "",
            f"Thread {names.get(main, 'MainThread')} (the main thread), {title}:",
            *traceback.format_list(stack),
        ]
        for ident, frame in frames.items():
            if ident not in (main, threading.get_ident()):  # not the writer itself
                lines += [f"Thread {names.get(ident, ident)}:", *traceback.format_stack(frame)]
        return "\n".join(line.rstrip("\n") for line in lines) + f"\n\n({NOT_SHOWN})\n"

    def after_lost_peer(self, error: BaseException) -> str:
        """A collective failed for a lost peer: write this rank's dump, wait up to ANSWER_SECONDS for the
        other ranks' (on the shared run folder), and say which ranks wrote none and where the dumps are;
        "" when there is no run folder yet (nothing to compare) or the dump could not be written."""
        started = time.time()
        if self.folder is None or self.dump(LOST_PEER, error) is None:
            return ""
        answered = self.answered_since(started - ANSWER_SECONDS)
        while len(answered) < self.world and time.time() < started + ANSWER_SECONDS:
            time.sleep(0.1)
            answered = self.answered_since(started - ANSWER_SECONDS)
        silent = [rank for rank in range(self.world) if rank not in answered]
        who = f"{ranks_named(silent)} did not answer" if silent else "every rank answered"
        return f"{who}, the stacks of the others are in {self.folder}"

    def answered_since(self, moment: float) -> set[int]:
        """The ranks with a dump in the folder written since `moment` (time.time())."""
        answered = set()
        for path in self.folder.glob("rank-*.txt"):
            found = DUMP_FILE.match(path.name)
            try:
                if found and path.stat().st_mtime >= moment:
                    answered.add(int(found.group(1)))
            except OSError:  # replaced under our feet: its new version is there
                continue
        return answered

    def written(self) -> Path | None:
        """The folder, when this job wrote anything into it (a dump, a flight recorder file); else None."""
        if self.folder is None or not self.folder.is_dir():
            return None
        for path in self.folder.rglob("*"):
            try:
                if path.is_file() and path.stat().st_mtime >= self.since:
                    return self.folder
            except OSError:  # a temporary file renamed meanwhile
                continue
        return None

    def tidy(self) -> None:
        """Remove the flight recorder's folder, and then RUN/stacks, when nothing was written there."""
        if self.folder is None:
            return
        for folder in (self.folder / FLIGHT_RECORDER_FOLDER, self.folder):
            try:
                folder.rmdir()  # only an empty one
            except OSError:
                return


def waits_in(stack: traceback.StackSummary) -> str:
    """The innermost frame of `stack`, and the innermost of this package's frames when that is another."""
    if not stack:
        return "(no Python frame)"
    innermost = stack[-1]
    ours = next((frame for frame in reversed(stack) if f"{os.sep}mnist_dist{os.sep}" in frame.filename), None)
    said = f"{innermost.name} ({short(innermost.filename)}:{innermost.lineno})"
    if ours is not None and ours is not innermost:
        said += f", called from {ours.name} ({short(ours.filename)}:{ours.lineno})"
    return said


def short(filename: str) -> str:
    """A frame's file as a reader finds it: from the package's folder (torch/..., mnist_dist/...)."""
    for marker in (f"site-packages{os.sep}", f"{os.sep}mnist_dist{os.sep}"):
        if marker in filename:
            head, tail = filename.rsplit(marker, 1)
            return tail if marker.startswith("site") else f"mnist_dist{os.sep}{tail}"
    return filename


def ranks_named(ranks: list[int], most: int = 8) -> str:
    """ "rank 1", "ranks 1 and 3", "ranks 1, 3 and 5", or the first `most` and how many more."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    shown = [str(rank) for rank in ranks[:most]]
    rest = f"{len(ranks) - most} more" if len(ranks) > most else shown.pop()
    return f"ranks {', '.join(shown)} and {rest}"


def say(text: str) -> None:
    """A line (or a dump) on stderr in one write, so that the ranks' lines never run into each other; a
    reader that has gone costs nothing (the dump thread must not die of it)."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
