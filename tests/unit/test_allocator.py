"""glibc's malloc tuned for reuse (mnist_dist/train/allocator.py): freed blocks are reused, not given back and
faulted in again; a user's own allocator settings are left alone."""

import os
import subprocess
import sys

import pytest

from mnist_dist.train import allocator
from mnist_dist.train.allocator import keep_freed_memory

# A training step's pattern in miniature: four 6.4 MB blocks (the cnn's first activation at batch 512)
# allocated, written and freed, round after round; prints the page faults of the last 20 rounds.
FAULTS_PER_ROUND = """
import ctypes, resource, sys
from mnist_dist.train.allocator import keep_freed_memory
print(keep_freed_memory())
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rounds(count):
    for _ in range(count):
        blocks = [libc.malloc(512 * 16 * 14 * 14 * 4) for _ in range(4)]
        for block in blocks:
            ctypes.memset(block, 1, 512 * 16 * 14 * 14 * 4)
        for block in blocks:
            libc.free(block)
rounds(3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_round(env: dict[str, str]) -> tuple[bool, float]:
    process = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_ROUND], env=env, capture_output=True, text=True, check=True
    )
    tuned, faults = process.stdout.split()
    return tuned == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_instead_of_faulted_in_again(monkeypatch):
    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    tuned, faults = faults_per_round(dict(os.environ))
    untuned, default_faults = faults_per_round({**os.environ, "MALLOC_CONF": "left to the user"})
    assert tuned and not untuned
    # glibc's defaults: each round maps and faults in fresh pages (4 x 6.4 MB = 6,272 pages; measured 6,240)
    assert default_faults > 1000
    assert faults < 10  # tuned: the same pages every round


@pytest.mark.parametrize("name", allocator.USER_SETTINGS)
def test_a_users_own_allocator_settings_are_kept(monkeypatch, name):
    monkeypatch.setenv(name, "32768")
    assert keep_freed_memory() is False
