"""Figures measured once per machine and kept for every later run: the device's matmul peak and each
model's FLOPs per training sample (train/peak.py, train/flops.py), in one small JSON file.

    ~/.cache/mnist-dist/measured.json       ($XDG_CACHE_HOME/mnist-dist/ where that is set)

A figure is a positive number under a key that names everything it depends on (the CPU model and
threads, the torch version, the model's layers), so another machine or version measures anew. A
file that cannot be read, is not JSON or holds a figure that is not a positive number is measured
over, never an error; a cache that cannot be written costs only the next run's measurement. Runs
that miss the cache at once on one machine measure one at a time (a lock file): two peaks measured
together on the same cores would each read about half the truth, and be kept.
"""

import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_dist.atomic import WriteFailed, write_atomically

FILE_NAME = "measured.json"
# A measurement holds the lock for 0.3-0.7 s (a peak on 2 cores) or ~2 s (a model's first count, which
# imports torch._dynamo); a holder past this is stopped, not measuring.
LOCK_WAIT_SECONDS = 10.0
LOCK_POLL_SECONDS = 0.05


def cache_path() -> Path:
    """The cache file, in $XDG_CACHE_HOME or ~/.cache (the XDG base directory rule)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-dist" / FILE_NAME


def read_figures(path: Path) -> dict[str, float]:
    """Every well-formed figure in the file; nothing when it is missing, unreadable or not JSON."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {key: float(value) for key, value in stored.items() if well_formed(value)}


def well_formed(value: object) -> bool:
    """A figure: a finite positive number (not a bool, which JSON's true would give)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@contextmanager
def measuring_alone(path: Path) -> Iterator[None]:
    """Hold the cache's lock file while measuring, so that another process of this machine waits and then
    reads the figure instead of measuring it on the same cores at the same time. Where no lock can be
    taken (a read-only home), or its holder keeps it past LOCK_WAIT_SECONDS (stopped with SIGSTOP or
    Ctrl-Z mid-measurement), measure unlocked: a figure a little low beats a run that never starts."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock").open("a")
    except OSError:
        yield
        return
    with lock:  # closing it releases the lock, as the OS does if this process dies
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(LOCK_POLL_SECONDS)
            except OSError:  # a file system without locks
                break
        yield


def cached(key: str, measure: Callable[[], float], path: Path | None = None) -> float:
    """The figure under `key`: read from the cache, else measured by `measure()` (alone on this machine)
    and kept. The read costs well under a millisecond; a miss costs one measurement."""
    path = path or cache_path()
    figure = read_figures(path).get(key)
    if figure is not None:
        return figure
    with measuring_alone(path):
        figures = read_figures(path)  # another process may have measured it while this one waited
        if key in figures:
            return figures[key]
        figure = float(measure())
        if well_formed(figure):
            try:
                write_atomically(path, json.dumps({**figures, key: figure}, indent=1, sort_keys=True) + "\n")
            except WriteFailed:
                pass  # a read-only or full disk: the figure still serves this run
    return figure
