"""The device's peak: the best rate of a large matrix multiply on it, the yardstick of the model FLOPs
utilization (MFU) a run reports (train/flops.py).

nanoGPT divides by a datasheet's promise (an A100's 312 bf16 TFLOP/s); a CPU has no such figure
that holds for its threads and its BLAS, so here the peak is measured: square matmuls of a few
sizes, the best rate of any repetition. MFU against it is the share of this machine's best matmul rate
that training reaches. The dtype is that of the run's matmuls: float32 on the CPU (AVX2 has
no fast bf16), the mixed precision's bf16 or fp16 on a GPU (its tensor cores), else float32 (TF32
where torch allows it).

Measured once per machine and kept (train/machine_cache.py): about 0.4-0.5 s on 2 CPU cores, which a
run with the cache does not pay (it reads the figure in under a millisecond). A peak measured while
other work shared the cores reads low, and stays: delete the cache file to measure it again.
"""

import platform
import time
from pathlib import Path

import torch

from mnist_dist.train.machine_cache import cached

# Square matmuls of n x n: on 2 AMD EPYC cores (2 threads, torch 2.14.1) every n from 512 to 2048 gave
# 165-198 GFLOP/s (best of 5), the noise between sizes larger than any trend; a GPU needs larger ones to fill.
CPU_SIZES = (512, 1024, 2048)
GPU_SIZES = (4096, 8192)
# Each size repeats until its share of this budget is spent (at least once: 2048 takes 0.1 s on 2
# threads, 0.2 s on one). On 2 quiet AMD EPYC cores six measurements read 206-207 GFLOP/s with 2 threads
# (0.38-0.48 s each) and 100-105 with one (0.48-0.49 s), as one given 6 s did (207, 102); with other
# jobs on the machine they read 152-199: its load, which longer measuring does not remove. The cache
# keeps one figure, so that the runs of a machine share their yardstick.
MEASURE_SECONDS = 0.3
MAX_REPEATS = 100
# Matmuls timed back to back per repetition on a GPU: one 8192 bf16 matmul takes ~2 ms on an H100,
# too short for a host clock around a synchronize.
GPU_CALLS = 10


def matmul_dtype(device_type: str, mixed_precision: str) -> torch.dtype:
    """The dtype of a run's matmuls: float32 on the CPU; bf16 or fp16 under mixed precision elsewhere."""
    if device_type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so the host clock times it (the CPU runs it as it is called)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = MEASURE_SECONDS) -> float:
    """The best rate of square (n, n) @ (n, n) matmuls on `device`, in FLOP/s: 2 n^3 FLOP each (n^2
    outputs, each of n multiplies and n adds). On the CPU with the threads this process has now."""
    sizes, calls = (CPU_SIZES, 1) if device.type == "cpu" else (GPU_SIZES, GPU_CALLS)
    generator = torch.Generator(device).manual_seed(0)  # never the global RNG, which training draws from
    best = 0.0
    for index, n in enumerate(sizes):
        a, b = (torch.rand(n, n, generator=generator, device=device, dtype=dtype) for _ in range(2))
        out = torch.empty(n, n, device=device, dtype=dtype)
        if index == 0:
            torch.mm(a, b, out=out)  # untimed: starts the threads (or the GPU's kernels) and touches `out`
        deadline = time.perf_counter() + seconds / len(sizes)
        for _ in range(MAX_REPEATS):
            synchronize(device)
            started = time.perf_counter()
            for _ in range(calls):
                torch.mm(a, b, out=out)
            synchronize(device)
            best = max(best, 2 * n**3 * calls / (time.perf_counter() - started))
            if time.perf_counter() > deadline:
                break
    return best


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC'), from /proc/cpuinfo on Linux, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a peak depends on: the device's model (a CPU's also its threads), the dtype, torch's version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if dtype == torch.float32:  # TF32 or not
            name += f", float32 matmul precision {torch.get_float32_matmul_precision()}"
    elif device.type == "cpu":
        name = f"{cpu_model()}, threads {torch.get_num_threads()}"
    else:
        name = platform.machine()
    return f"peak {device.type} {name}, {str(dtype).removeprefix('torch.')}, torch {torch.__version__}"


def device_peak(device: torch.device, mixed_precision: str, cache: Path | None = None) -> float:
    """This process's device's matmul peak in FLOP/s for a run of `mixed_precision`: from the machine's
    cache, else measured (about 0.4-0.5 s on 2 cores) and kept there."""
    dtype = matmul_dtype(device.type, mixed_precision)
    return cached(peak_key(device, dtype), lambda: matmul_peak(device, dtype), cache)
