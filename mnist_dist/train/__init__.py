"""Training: one job from a parsed config (train/job.py: resolve, lock, build, fit, clean up), the
Trainer loop, model selection on the validation split, progress reports, optimizers and schedules,
stop signals, stack dumps (stacks.py), each rank's step times and stragglers (stragglers.py), and the
numbers an epoch and a run report, MFU (flops.py, peak.py, machine_cache.py) and the time split among them;
glibc's malloc set for reuse (allocator.py, which the evaluate command calls too), and the imports' objects
kept out of Python's garbage collections (garbage.py).

May import: everything below it (the foundation, `checkpoint`, `tracking`, `evaluate`). Only the
commands, `sweep` and `check` import it. Nothing is imported here, so `--help` answers without torch.
"""
