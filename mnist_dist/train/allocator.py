"""glibc's malloc set to keep the memory a step frees, for the next step to reuse (train.py and
evaluate.py call it first, before torch allocates).

A CPU step allocates and frees the same large tensors every time: at batch 512 the cnn's first
activation is 6.4 MB. With glibc's defaults such a block is either mapped fresh from the kernel
(above the mmap threshold, 128 KiB to start) or handed back when the heap's top is trimmed, and each
new 4 KiB page then costs a page fault and the kernel's zeroing. Measured on the cnn's training step
at batch 512 (2 cores, bench/step_levers.py): about 5,800 page faults a step and 17,200 samples/s with
the defaults; 15 a step and 25,000 samples/s with the two settings below (docs/BENCHMARKS.md, "Raising
the cnn's MFU").

PyTorch's CPU tuning guide suggests jemalloc or tcmalloc through LD_PRELOAD for the same reason;
this is the same remedy from the C library every Linux system already has. Nothing that is computed
changes: only where freed memory goes. A user who sets glibc's own variables (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_) or preloads another allocator keeps theirs.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_THRESHOLD = 32 << 20  # 32 MiB, the largest glibc accepts on 64-bit: smaller blocks come from the heap
TRIM_THRESHOLD = 1 << 30  # 1 GiB: the heap's free top is kept unless this much piles up
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_CONF", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for reuse (see the module's docstring); True if it was tuned. Call once,
    early: blocks allocated before keep the policy they were made under."""
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, the C library's among them
        if not hasattr(libc, "gnu_get_libc_version"):  # glibc's alone: musl has a mallopt that ignores its arguments
            return False
    except OSError:
        return False
    # Both or neither: a fixed mmap threshold alone leaves the heap trimmed after every step, and a trim
    # threshold alone fixes the mmap threshold at 128 KiB (measured: 17,100 and 10,800 samples/s).
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
