"""How a run ends when it does not finish. Entry points print the message as one line (no
traceback) and exit with the class's exit code:

    0  finished
    1  crashed (a bug or a failure of the machine: a traceback is printed)
    2  bad input: a flag, a config file, a dataset file, a checkpoint (UserError)
    3  stopped by a --stop-signals signal (SIGUSR1, SIGTERM, Ctrl-C) after a checkpoint: run again to resume (Preempted)
    4  the loss became NaN or infinite; the last good checkpoint is kept (Diverged)
    5  another process stopped responding or ended; the last complete checkpoint is kept (LostProcess)
  130  a second Ctrl-C, or Ctrl-C before or after the training loop: no new checkpoint (Interrupted)

Also the two helpers every such message uses: `first_line` and `did_you_mean`.
"""

import difflib
import os
import sys
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a flag, a config file, a dataset file, a checkpoint. The message names the fix."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid option value, an unknown key, or an unreadable config file."""


class DatasetError(UserError):
    """Dataset files that are missing, corrupt, or cannot be downloaded."""


class Preempted(Exception):
    """A stop signal arrived; every rank finished its step and a checkpoint was written."""

    exit_code = 3


class Diverged(Exception):
    """The training loss became NaN or infinite."""

    exit_code = 4


class LostProcess(Exception):
    """A collective failed: another process stopped responding (--collective-timeout) or ended."""

    exit_code = 5


class Interrupted(Exception):
    """Ctrl-C outside the training loop (start-up, the final save), where there is no step to finish."""

    exit_code = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


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
    """Print the one-line message. Config errors, stop signals and a diverged loss happen on every
    rank alike, so rank 0 says them once; other errors (a file missing on one node) can be one
    rank's own, so each rank says its own, naming itself."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(f"error: {error}", file=sys.stderr, flush=True)
    elif not isinstance(error, (ConfigError, Preempted, Diverged, Interrupted)) and not getattr(
        error, "same_on_every_rank", False
    ):
        print(f"error: rank {rank}: {error}", file=sys.stderr, flush=True)
