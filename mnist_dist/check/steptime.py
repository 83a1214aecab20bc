"""Each rank's time per step: data (a batch from the real loader), forward and backward, and a flag on a
rank more than 1.5x the ranks' median. A step here is one batch (--grad-accum-steps batches make an
optimizer step).

Forward and backward are timed on the bare model, without DDP's all-reduce: in a real step the ranks wait
for the slowest one, so every rank's step takes its time and the straggler hides; alone, it shows. All
ranks time together, so each meets what it would meet in training (the other processes on its node).
"""

import socket
import statistics
import time
from collections.abc import Iterator

import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.check.allreduce import synchronize
from mnist_dist.check.report import Row
from mnist_dist.config import Config
from mnist_dist.data.loaders import Batch, TrainBatches
from mnist_dist.train.build import DataAndModel

SLOWER = 1.5  # a rank this many times the median is flagged: every step of the job waits for it
# Each rank times steps for at least WINDOW seconds and takes their mean: its share of the machine over
# the window. On a loaded machine (2 cores, load 8, 4 processes) equal ranks measured up to 1.7x apart
# over 10 steps (30 ms), within 1.25x over 1 s. MIN_STEPS: a model whose step takes longer than the window.
WINDOW = 2.0
MIN_STEPS = 5


def endless(loader: TrainBatches) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def timed_steps(parts: DataAndModel, config: Config, accelerator: Accelerator) -> dict:
    """This rank's mean seconds of data, forward and backward over at least WINDOW seconds and MIN_STEPS
    steps, on its own batches from the real loader and the bare model; and the steps timed."""
    module, device, batches = parts.module, accelerator.device, endless(parts.loader)
    times = {"data": [], "forward": [], "backward": []}
    while len(times["data"]) < MIN_STEPS or sum(map(sum, times.values())) < WINDOW:
        started = time.perf_counter()
        images, labels = next(batches)
        inputs = parts.normalize(images).contiguous(memory_format=parts.memory_format)
        synchronize(device)  # a batch on a GPU: its gather queued, not done
        fetched = time.perf_counter()
        with accelerator.autocast():
            logits = module(inputs).float()
        loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        synchronize(device)
        forward = time.perf_counter()
        loss.backward()
        synchronize(device)
        for name, seconds in zip(times, (fetched - started, forward - fetched, time.perf_counter() - forward)):
            times[name].append(seconds)
        module.zero_grad(set_to_none=True)  # the compared steps are over: these gradients are never applied
    return {name: statistics.mean(each) for name, each in times.items()} | {"steps": len(times["data"])}


def step_time_rows(parts: DataAndModel, config: Config, accelerator: Accelerator) -> list[Row]:
    """A row per rank, from every rank's times (one gather)."""
    accelerator.wait_for_everyone()  # start together, as in training
    everyone = gather_object([{"host": socket.gethostname(), **timed_steps(parts, config, accelerator)}])
    totals = [each["data"] + each["forward"] + each["backward"] for each in everyone]
    median = statistics.median(totals)
    rows = []
    for rank, (each, total) in enumerate(zip(everyone, totals)):
        times = f"data {each['data'] * 1e3:.2f} ms, forward {each['forward'] * 1e3:.2f} ms, "
        times += f"backward {each['backward'] * 1e3:.2f} ms: {total * 1e3:.2f} ms, {total / median:.2f}x the median"
        why = ""
        if total > SLOWER * median:
            why = (
                f"rank {rank} on {each['host']} takes {total * 1e3:.2f} ms a step, {total / median:.1f}x the ranks' "
                f"median {median * 1e3:.2f} ms (limit {SLOWER}x), and every step waits for it: find what slows "
                f"{each['host']} (other jobs, fewer cores, a throttled GPU) or leave it out (sbatch --exclude)"
            )
        values = {**each, "total": total, "median": median}
        rows.append(Row("step time", f"rank {rank}", times, ok=not why, why=why, values=values))
    return rows
