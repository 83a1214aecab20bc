"""summary.json's time split (train/time_split.py): the process's age from the kernel, and the parts."""

import subprocess
import sys
import time

from mnist_dist.train.time_split import TimeSplit, process_seconds

AGE_AFTER_A_SLEEP = (
    "import time; time.sleep(0.5); from mnist_dist.train.time_split import process_seconds; print(process_seconds())"
)


def test_the_process_age_counts_from_the_processs_start():
    started = time.perf_counter()
    age = float(subprocess.run([sys.executable, "-c", AGE_AFTER_A_SLEEP], capture_output=True, text=True).stdout)
    # At least its sleep; at most the time the parent saw it run (the kernel's start time is in 10 ms ticks).
    assert 0.5 <= age <= time.perf_counter() - started + 0.01
    assert 0 < process_seconds()


def test_the_epochs_ends_are_what_fit_spent_outside_training_and_validation():
    split = TimeSplit(start_up=3.5, training=10.0, validation=2.0, end=1.5)
    assert split.as_dict(fit_seconds=12.5) == {
        "start_up": 3.5,
        "training": 10.0,
        "validation": 2.0,
        "epoch_ends": 0.5,
        "end": 1.5,
    }
