"""Model FLOPs utilization (MFU), as nanoGPT reports it: the arithmetic training does per second, and
what share of the device's matmul peak (train/peak.py) that is.

Units. A FLOP is one floating-point multiply or one add, so a multiply-add counts 2: an (m, k) @ (k, n)
matmul is 2 m k n FLOP (torch's FlopCounterMode, whose count this is). FLOP/s are per second of wall time.

    train_flops_per_sample     forward + backward of one sample: the matmuls and convolutions only (FlopCounterMode
                               counts no elementwise op: activations, BatchNorm, the loss, the optimizer step)
    achieved_flops_per_second  train_flops_per_sample x samples/s of the whole job (every process)
    peak_flops_per_second      the whole job's: one process's measured matmul peak x the processes
    mfu                        achieved_flops_per_second / peak_flops_per_second

Every epoch row has the epoch's achieved FLOP/s and MFU, summary.json the run's (this job's epochs together).
"""

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_dist.data.images import DatasetInfo
from mnist_dist.train.machine_cache import cached
from mnist_dist.train.peak import device_peak

# Samples in the counted batch: BatchNorm trains on no fewer than 2, and every layer's count grows
# linearly with the batch, so that 2 give the per-sample figure exactly.
COUNTED_SAMPLES = 2
NO_RATES = {"achieved_flops_per_second": None, "mfu": None}  # where the figures are unknown


def training_flops_per_sample(model: torch.nn.Module, sample_shape: tuple[int, ...]) -> float:
    """FLOP of one training sample's forward and backward through `model`, whose input is one sample of
    `sample_shape` (C, H, W); the cross-entropy loss of class 0 is what backward starts from.

    The count runs on a copy, on the CPU: the model's BatchNorm statistics and gradients stay as they
    were, and the input is zeros, so no random number is drawn (a run stays bit for bit what it was)."""
    from torch.utils.flop_counter import FlopCounterMode  # 0.1 s of imports (triton): only where counted

    twin = copy.deepcopy(model).to("cpu").train()
    images = torch.zeros(COUNTED_SAMPLES, *sample_shape)
    labels = torch.zeros(COUNTED_SAMPLES, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(twin(images), labels).backward()
    return counter.get_total_flops() / COUNTED_SAMPLES


def model_flops(model: torch.nn.Module, info: DatasetInfo) -> float:
    """training_flops_per_sample for `info`'s images, from the machine's cache when counted before: the
    key names the model's layers (its repr: every size, stride and padding), the input and torch."""
    shape = (info.channels, info.height, info.width)
    layers = hashlib.sha256(f"{model!r} {shape}".encode()).hexdigest()[:16]
    return cached(f"train_flops {layers}, torch {torch.__version__}", lambda: training_flops_per_sample(model, shape))


@dataclass
class Utilization:
    """A job's FLOPs per sample and peak (None where unknown): what turns a speed into FLOP/s and MFU."""

    flops_per_sample: float | None  # FLOP, forward + backward
    peak_per_process: float | None  # FLOP/s, one process's device
    processes: int

    @classmethod
    def unknown(cls) -> "Utilization":
        """Nothing measured (the launch check's trainer, or a measurement that failed): no figures."""
        return cls(None, None, 1)

    @property
    def peak(self) -> float | None:
        """The whole job's peak, FLOP/s: every process drives its own device (a GPU, or its share of the cores)."""
        return self.peak_per_process * self.processes if self.peak_per_process else None

    def rates(self, samples_per_second: float) -> dict:
        """achieved_flops_per_second and mfu (a fraction) of a job training `samples_per_second` (all processes)."""
        if self.flops_per_sample is None:
            return dict(NO_RATES)
        achieved = self.flops_per_sample * samples_per_second
        return {"achieved_flops_per_second": achieved, "mfu": achieved / self.peak if self.peak else None}

    def summary(self, samples_per_second: float | None) -> dict:
        """summary.json's: the FLOPs per sample, the job's peak, and the rates at the job's overall speed
        (TimeSplit.samples_per_second; None when it trained no step: a finished run's final files written again)."""
        overall = self.rates(samples_per_second) if samples_per_second else dict(NO_RATES)
        return {"train_flops_per_sample": self.flops_per_sample, "peak_flops_per_second": self.peak, **overall}


def job_utilization(
    accelerator: Accelerator, model: torch.nn.Module, info: DatasetInfo, say: Callable[[str], None]
) -> Utilization:
    """The main process counts the model's FLOPs and measures its device's peak (or reads both from the
    machine's cache, well under a millisecond) while the others wait for its figures in one broadcast:
    measuring all at once, N processes sharing the cores would each find about 1/N of the peak. Every
    process has the same figures; the others' devices are taken to be the main process's kind. A failure
    is said in one line (`say`) and leaves the figures unknown."""
    figures: list = [(None, None)]
    if accelerator.is_main_process:
        try:
            figures = [(model_flops(model, info), device_peak(accelerator.device, accelerator.mixed_precision))]
        except Exception as error:  # a report, never the reason a run fails: without figures it reports none
            say(f"MFU not reported: counting the FLOPs or measuring the peak failed ({type(error).__name__}: {error})")
    broadcast_object_list(figures)  # a no-op in a single process
    flops, peak = figures[0]
    return Utilization(flops, peak, accelerator.num_processes)
