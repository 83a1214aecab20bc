"""Stop signals in a real process: the first Ctrl-C asks for a checkpoint, a later second one aborts; the
handlers last as long as the outermost `with`; the lines of a stop outside the training loop."""

import os
import signal
import subprocess
import sys
import time

from helpers import REPO

from mnist_dist.errors import Preempted
from mnist_dist.train.signals import StopRequest

WAITER = """
import sys, time
from mnist_dist.train.signals import DEFAULT_STOP_SIGNALS, StopRequest
names = tuple(sys.argv[1].split(",")) if len(sys.argv) > 1 else DEFAULT_STOP_SIGNALS
with StopRequest(names) as stop:
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stop.signal_name is None:
        time.sleep(0.01)
    time.sleep(3 if stop.signal_name else 0)  # for the signals that follow
    print("asked by", stop.signal_name, flush=True)
"""


def start_waiter(*names: str) -> subprocess.Popen:
    """A process that waits for a stop request from the signals `names` (by default the default ones)."""
    process = subprocess.Popen(
        [sys.executable, "-c", WAITER, *([",".join(names)] if names else [])],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_second_ctrl_c_a_second_later_aborts_at_once_with_one_line():
    process = start_waiter()
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # within a second: a launcher's copy of the first, not a second press
    time.sleep(1.2)
    assert process.poll() is None
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 130 and time.monotonic() - started < 5
    assert stderr.startswith("error: interrupted again: stopped at once, without a checkpoint")
    assert "Traceback" not in stderr and "asked by" not in stdout


def test_sigterm_and_one_ctrl_c_only_ask_and_keep_the_first_name():
    for number, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
        process = start_waiter()
        process.send_signal(number)
        time.sleep(0.2)
        process.send_signal(signal.SIGUSR1)  # a later signal does not rename the request
        stdout, stderr = process.communicate(timeout=10)
        assert process.returncode == 0 and stdout.strip() == f"asked by {name}", stderr


def test_only_the_chosen_stop_signals_ask_the_others_keep_their_default_action():
    process = start_waiter("USR2")
    process.send_signal(signal.SIGUSR2)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and stdout.strip() == "asked by SIGUSR2", stderr
    process = start_waiter("USR2")
    process.send_signal(signal.SIGUSR1)  # not chosen: Python's default, the process dies of it
    process.communicate(timeout=10)
    assert process.returncode == -signal.SIGUSR1


def test_a_nested_with_keeps_the_handlers_until_the_outermost_one_ends():
    # The train command's StopRequest holds them from start-up to its end; Trainer.fit's `with` sits inside it.
    before = signal.getsignal(signal.SIGUSR2)
    stop = StopRequest(("USR2",))
    with stop:
        with stop:
            pass
        os.kill(os.getpid(), signal.SIGUSR2)  # after the loop: the final evaluation and writes
        deadline = time.monotonic() + 5
        while stop.signal_name is None and time.monotonic() < deadline:  # Python runs the handler between bytecodes
            time.sleep(0.01)
        assert stop.signal_name == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is before


def test_a_stop_outside_the_loop_says_what_was_kept_and_what_to_run():
    stop = StopRequest(("USR2",))
    assert stop.before_first_step() is None and stop.after_the_final_files("the run is complete") is None
    with stop:
        os.kill(os.getpid(), signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while stop.signal_name is None and time.monotonic() < deadline:
            time.sleep(0.01)
    start_up, final = stop.before_first_step(), stop.after_the_final_files("so the run is complete in runs/x")
    assert isinstance(start_up, Preempted) and start_up.exit_code == 3 and start_up.same_on_every_rank
    assert str(start_up) == (
        "stopped by SIGUSR2 during start-up, before the first step: nothing to checkpoint yet; "
        "run the same command again to start."
    )
    assert str(final) == (
        "stopped by SIGUSR2 during the final evaluation and writes: they were finished first, "
        "so the run is complete in runs/x."
    )
