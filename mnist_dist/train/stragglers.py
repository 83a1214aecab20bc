"""Stragglers: a rank slower than the others, said while the job runs.

Under DDP every rank waits for the slowest one in the gradients' collective, so a slow rank (a
throttled node, a slow disk, a noisy neighbour) slows the whole job, and its slowness hides in every
rank's backward time. What it cannot hide is its own work before the collective: the wait for its
next batch and its forward and loss. Each rank measures those and its whole steps (StepTimer); the
ranks' agreement (train/agreement.py) gathers them in the collective it makes anyway, every
CHECK_EVERY steps and at epoch ends and checkpoints; then on every rank alike (Stragglers):

    a "ranks" row in metrics.jsonl (and W&B's charts, tracking/rank_charts.py) at the first
    gather at or after every --log-every step: each rank's milliseconds per step since the last;
    one warning line when a rank's part exceeds FACTOR times the other ranks' median, by FLOOR of
    the step at least, for PATIENCE rows in a row, naming the rank, its host and the part;
    summary.json's "ranks": each rank's seconds in all, and the share of the step time lost to the
    slowest rank.
"""

import socket
import statistics
import time
from collections.abc import Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.tracking.tracker import Tracker

# What each rank measures and sends, in this order, per row of the gathered tensor: seconds waiting
# for batches, in forward and loss, in whole steps (from the wait for its first batch to the
# optimizer's step), and the steps they cover.
MEASURED = ("data_wait", "forward", "step")
# The parts a straggler shows in (its own work before any collective): name in the warning, and where to look.
JUDGED = {
    "data_wait": ("data wait", "a slow disk or busy loader workers"),
    "forward": ("forward and loss", "throttling or other jobs on its CPUs or GPU"),
}
# A rank is slow in a part when it spends more than FACTOR times the other ranks' median there, and
# the excess is at least FLOOR of the median step (less is not worth a word: 0.05 ms against 0.01 ms
# of data wait is 5x), for PATIENCE rows in a row (a burst of other work on a shared machine passes).
# Measured on the 2-core test machine, 2 gloo processes of lenet on digits, batch 32, rows of 20 and
# 50 steps, alone and beside another 2-process training (load average 3-6): in 16 unslowed runs (about
# 240 rows) the rule with FLOOR 0.1 passed single rows in 3 runs, and three rows in a row once (data
# wait, a DataLoader worker each, beside the other training: its workers starved unevenly); with 0.2,
# never. A rank whose loader worker was SIGSTOPped 70 ms of every 100 ms waited 18-41 ms per step for
# data against 2-8 ms, and passed it in 29 of 30 rows (tests/integration/test_stragglers.py). A whole
# rank SIGSTOPped in a short cycle shows less: a stop lands in its forward only in the forward's share
# of the step (about a sixth for lenet on gloo), so its excess there stayed under a fifth of the step.
FACTOR = 2.0
FLOOR = 0.2
PATIENCE = 3


class Span:
    """Seconds spent inside `with span:` blocks, summed until taken. On the CPU by the host's clock;
    on CUDA by a pair of events the device records in its stream around each block, read when taken
    (the host runs ahead of a GPU: its own clock would time the kernels' launches, not their work).
    Reading them waits for the events, a host sync the ranks' agreement makes next anyway."""

    def __init__(self, cuda: bool):
        self.cuda, self.seconds, self.pairs, self.started = cuda, 0.0, [], None

    def start(self) -> None:
        if self.cuda:
            self.started = torch.cuda.Event(enable_timing=True)
            self.started.record()
        else:
            self.started = time.perf_counter()

    def stop(self) -> None:
        if self.started is None:  # never started (a step the timer's batches did not begin)
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((self.started, end))
        else:
            self.seconds += time.perf_counter() - self.started
        self.started = None

    def __enter__(self) -> "Span":
        self.start()
        return self

    def __exit__(self, *exception) -> None:
        self.stop()

    def take(self) -> float:
        """The seconds since the last take."""
        if self.pairs:
            self.pairs[-1][1].synchronize()  # the stream's events complete in order: all of them are done
            self.seconds += sum(start.elapsed_time(end) for start, end in self.pairs) / 1000  # ms -> s
        seconds, self.seconds, self.pairs = self.seconds, 0.0, []
        return seconds


class StepTimer:
    """This rank's time per optimizer step: waiting for data, in forward and loss, in all; summed
    until the ranks' agreement takes them. Data wait is the host's wait for the loader's iterator,
    on every device (a slow loader keeps the host, and so the device, waiting)."""

    def __init__(self, device: torch.device | None = None):
        cuda = device is not None and device.type == "cuda"  # None: the host's clock
        self.forward, self.step = Span(cuda), Span(cuda)  # `with timer.forward:` around forward and loss
        self.data_wait, self.steps = 0.0, 0

    def batches(self, loader: Iterable) -> Iterator:
        """The loader's batches; the wait for each counts as data wait, and the first of a step starts it."""
        batches = None
        while True:
            begins_step = self.step.started is None
            if begins_step:
                self.step.start()
            started = time.perf_counter()
            try:
                batches = iter(loader) if batches is None else batches  # a DataLoader starts its workers here
                batch = next(batches)
            except StopIteration:
                if begins_step:
                    self.step.started = None  # no step follows the epoch's last batch
                return
            self.data_wait += time.perf_counter() - started
            yield batch

    def end_step(self) -> None:
        """After the optimizer's step."""
        self.step.stop()
        self.steps += 1

    def take(self) -> list[float]:
        """[data wait s, forward s, step s, steps] since the last take, in MEASURED's order."""
        taken = [self.data_wait, self.forward.take(), self.step.take(), float(self.steps)]
        self.data_wait, self.steps = 0.0, 0
        return taken


def slow_parts(means: dict[str, list[float]]) -> list[tuple[int, str, float, float]]:
    """(rank, part, its ms per step, the other ranks' median) for each rank slow in a JUDGED part by
    the rule above; `means`: each MEASURED quantity's ms per step, a value per rank."""
    slow, world = [], len(means["step"])
    if world < 2:
        return slow
    median_step = statistics.median(means["step"])
    for part in JUDGED:
        for rank, value in enumerate(means[part]):
            others = statistics.median(means[part][:rank] + means[part][rank + 1 :])
            if value > FACTOR * others and value - others >= FLOOR * median_step:
                slow.append((rank, part, value, others))
    return slow


class Stragglers:
    """The ranks' times as gathered (the same on every rank): the rows, the warning, the totals."""

    def __init__(
        self, timer: StepTimer, hosts: list[str], console: TrainingConsole, tracker: Tracker, log_every: int, step: int
    ):
        self.timer, self.hosts = timer, hosts  # this rank's timer; each rank's host name
        self.console, self.tracker, self.log_every = console, tracker, log_every
        self.reported = step  # the step of the last row (or where this job started)
        self.window = [[0.0] * 4 for _ in hosts]  # per rank, MEASURED's seconds and steps since that row
        self.totals = [[0.0] * 4 for _ in hosts]  # the same, over this job
        self.streaks: dict[tuple[int, str], list] = {}  # (rank, part) -> [rows, first step, ms sum, median ms sum]

    @classmethod
    def start(
        cls, accelerator: Accelerator, console: TrainingConsole, tracker: Tracker, log_every: int, step: int
    ) -> "Stragglers":
        """Every rank calls this at the same point: one exchange of the ranks' host names."""
        hosts = gather_object([socket.gethostname()])
        return cls(StepTimer(accelerator.device), hosts, console, tracker, log_every, step)

    def gathered(self, step: int, per_rank: list[list[float]]) -> bool:
        """Each rank's StepTimer.take(), gathered at `step`: a row (and True) when a --log-every step has passed."""
        for rank, taken in enumerate(per_rank):
            for index, value in enumerate(taken):
                self.window[rank][index] += value
                self.totals[rank][index] += value
        if step // self.log_every == self.reported // self.log_every or not self.window[0][3]:
            return False
        means = {
            name: [round(seconds[index] / max(seconds[3], 1) * 1000, 3) for seconds in self.window]  # ms, to 1 us
            for index, name in enumerate(MEASURED)
        }
        row = {"steps": int(max(seconds[3] for seconds in self.window))}
        self.tracker.log("ranks", step, row | {f"{name}_ms": values for name, values in means.items()})
        self.judge(self.reported + 1, step, means)
        self.reported, self.window = step, [[0.0] * 4 for _ in self.hosts]
        return True

    def judge(self, first: int, last: int, means: dict[str, list[float]]) -> None:
        """Steps `first`..`last`, one row: a warning when a rank's part has been slow PATIENCE rows in a row."""
        slow = {(rank, part): (value, others) for rank, part, value, others in slow_parts(means)}
        steps = last - first + 1
        for key in list(self.streaks):
            if key not in slow:
                del self.streaks[key]  # no longer slow: a later streak warns again
        for (rank, part), (value, others) in slow.items():
            streak = self.streaks.setdefault((rank, part), [0, first, 0.0, 0.0])
            streak[0] += 1
            streak[2] += value * steps
            streak[3] += others * steps
            if streak[0] == PATIENCE:
                self.console.print(self.warning(rank, part, streak, last))

    def warning(self, rank: int, part: str, streak: list, last: int) -> str:
        name, where = JUDGED[part]
        steps, host = last - streak[1] + 1, self.hosts[rank]
        return (
            f"warning: rank {rank} on {host} is slow: {name} {streak[2] / steps:.1f} ms per step, "
            f"median of the other ranks {streak[3] / steps:.1f} ms (steps {streak[1]}-{last}); "
            f"every rank waits for it: check {host} for {where}"
        )

    def summary(self) -> dict:
        """summary.json's "ranks": each rank's host and seconds in all (this job's steps), the slowest
        rank (the most seconds in its own work before the collective: data wait and forward), and the
        share of the step time it cost: its excess there over the other ranks' median (a lower bound:
        its backward and optimizer step are not in it)."""
        totals, world = self.totals, len(self.hosts)
        summary = {"hosts": self.hosts, "steps": int(max(seconds[3] for seconds in totals))}
        summary |= {
            f"{name}_seconds": [round(each[index], 3) for each in totals] for index, name in enumerate(MEASURED)
        }
        own = [seconds[0] + seconds[1] for seconds in totals]
        slowest = max(range(world), key=own.__getitem__)
        lost = own[slowest] - statistics.median(own[:slowest] + own[slowest + 1 :]) if world > 1 else 0.0
        step_seconds = statistics.mean(summary["step_seconds"])
        share = round(lost / step_seconds, 4) if step_seconds else 0.0
        return summary | {"slowest_rank": slowest, "lost_to_slowest": share}
