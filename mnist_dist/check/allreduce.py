"""An all-reduce of known values at several sizes, on the group's backend: are the sums right, and how fast.

Time, algbw and busbw as nccl-tests defines them (its doc/PERFORMANCE.md): the mean time of one
operation after a warm-up, algbw = bytes / time, and busbw = algbw x 2(n - 1)/n, the bytes each rank's
links carry in a ring all-reduce: the figure to hold against the hardware's peak, whatever n is.
Decimal GB/s, as nccl-tests prints them.
"""

import time

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.check.report import Row

WARMUP, ITERATIONS = 5, 20  # nccl-tests' defaults (-w 5, -n 20)
PATTERN = 97  # known values repeat every 97 elements: a part added at a wrong offset shows (see known_values)


def human(size: int) -> str:
    """4096 -> '4 KiB'."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: a CUDA collective returns once it is queued, not done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sum_error(size: int, accelerator: Accelerator) -> float:
    """The largest error of one all-reduce of known values: rank r adds r + 1 + (i mod 97) at element i;
    the sum, n(n + 1)/2 + n (i mod 97), is exact in float32 up to 4096 ranks (it stays below 2^24)."""
    n, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    pattern = (torch.arange(size // 4, device=device) % PATTERN).float()
    values = pattern + (rank + 1)
    torch.distributed.all_reduce(values)
    expected = pattern * n + n * (n + 1) / 2
    return (values - expected).abs().max().item()


def seconds_per_operation(size: int, accelerator: Accelerator) -> float:
    """The mean time of one all-reduce of `size` bytes, after a warm-up, all ranks starting together."""
    buffer = torch.zeros(size // 4, device=accelerator.device)  # zeros: sums that never grow
    for _ in range(WARMUP):
        torch.distributed.all_reduce(buffer)
    synchronize(accelerator.device)
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    for _ in range(ITERATIONS):
        torch.distributed.all_reduce(buffer)
    synchronize(accelerator.device)
    return (time.perf_counter() - started) / ITERATIONS


def size_row(size: int, backend: str, n: int, measured: list[tuple[float, float]]) -> Row:
    """One size's row from every rank's (largest error, seconds). The time is the slowest rank's: the
    one a collective's users wait for."""
    seconds = max(each for _, each in measured)
    algbw = size / seconds / 1e9
    busbw = algbw * 2 * (n - 1) / n
    wrong = [rank for rank, (error, _) in enumerate(measured) if error != 0]
    result = f"{seconds * 1e3:.3f} ms, algbw {algbw:.3g} GB/s, busbw {busbw:.3g} GB/s; "
    result += f"sums wrong on ranks {wrong}" if wrong else "sums exact on every rank"
    why = ""
    if wrong:
        worst = max(error for error, _ in measured)
        why = (
            f"the all-reduce of {human(size)} gave wrong sums on ranks {wrong} (off by up to {worst:g}): "
            "test the nodes' network (nccl-tests' all_reduce_perf) and the interfaces it uses "
            "(NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME: docs/SLURM.md)"
        )
    values = {"backend": backend, "bytes": size, "seconds": seconds, "algbw_gb_s": algbw, "busbw_gb_s": busbw}
    return Row("all-reduce", f"{backend} {human(size)}", result, ok=not wrong, why=why, values=values)


def all_reduce_rows(accelerator: Accelerator, sizes: list[int]) -> list[Row]:
    """A row per size. One process has no group and nothing to reduce: one row that says so."""
    if not torch.distributed.is_initialized():
        return [Row("all-reduce", "no group", "1 process: nothing to reduce")]
    backend, rows = torch.distributed.get_backend(), []
    for size in sizes:
        mine = (sum_error(size, accelerator), seconds_per_operation(size, accelerator))
        rows.append(size_row(size, backend, accelerator.num_processes, gather_object([mine])))
    return rows
