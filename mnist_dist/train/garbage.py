"""Python's cyclic garbage collector kept off the objects that imports make: the train command wraps its
heavy imports in `imports_uncollected`, and both commands freeze what they leave before the process exits.

Importing torch, torch._dynamo (with sympy; torch.optim imports it on the first step, torchvision on
import) and accelerate makes about 340,000 objects that live as long as the process. The collector's
full passes walk all of them: while they arrive (CPython 3.10-3.13 collects fully each time the
long-lived objects grow by a quarter) and again when the interpreter exits. Measured on 2 cores
(bench/start_up.py, medians of 5 alternating rounds; docs/BENCHMARKS.md, "Start-up"):
`--config configs/fashion-93.yaml --epochs 1` took 6.77 s with the collector's defaults and 5.06 s with
this (start-up 2.71 -> 2.13 s, the exit 0.9 s shorter); a test's 20-step lenet run 3.69 -> 2.38 s.

The remedy takes the gc module's own tools for long-lived objects: no collection during the imports,
then `gc.freeze()` moves every object alive into a permanent generation that later collections skip.
Nothing else changes: objects are still freed by reference counting, and the collector goes on for
what training makes. For a process that runs one command: frozen objects that later become cyclic
garbage are never collected.
"""

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def imports_uncollected() -> Iterator[None]:
    """The collector off inside (as the caller had it after, even when an import fails); whatever is
    alive at the end, the imported modules' objects, frozen out of every later collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
