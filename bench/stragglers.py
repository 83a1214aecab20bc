"""What the per-rank step times cost the trainer (train/stragglers.py): 2 gloo processes of lenet, on and off.

    .venv/bin/python bench/stragglers.py [--rounds 300] [--steps 20] [--out bench/results/stragglers.json]

Starts itself on 2 processes (torchrun, 1 thread each) and builds the trainer as train.py does: lenet's
recipe on Fashion-MNIST, its global batch of 100 (50 a process), the resident loader, --log-every 50,
nothing written. Then bursts of --steps optimizer steps (Trainer.train_epoch, progress and checks
included), the two variants alternating (on, off, then off, on: a drift of the machine's load
slows both alike). Each burst ends as an epoch does, with a forced check and an all-reduce of the
epoch's sums: the checks weigh more here (3 in 20 steps) than in a run (1 in 10):

    on   the trainer as it is: each rank times its data wait, forward and step (StepTimer), and the
         ranks' check every 10 steps is an all_gather of 7 numbers a rank; a "ranks" row every 50
         steps, judged for stragglers;
    off  the trainer without them: no timer, and the check's all_reduce of its 3 flags, as before.

The cost is on / off - 1 per round (its median, and the spread); each variant's figure is the median
ms per step. On a shared machine the rounds spread by far more than the cost, so the parts of the
difference are also measured alone, each to a microsecond: the check's collective in interleaved
repeats (all_reduce of 3 float64 against all_gather of 7 float64 a rank), the timer's calls in a
step (StepTimer.batches, forward, end_step, against the bare loop), and the gathered times' handling
per check (Stragglers.gathered, a row every 5th check). Their sum per step, over the off step time,
is the cost's estimate: (timer + (all_gather - all_reduce + handling) / 10) / step.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import collective_microseconds, machine, train_command, write_results  # noqa: E402
from mnist_dist.config import make_config  # noqa: E402
from mnist_dist.data.datasets import load_dataset  # noqa: E402
from mnist_dist.distributed import build_accelerator  # noqa: E402
from mnist_dist.tracking.console import TrainingConsole  # noqa: E402
from mnist_dist.train.agreement import Agreement  # noqa: E402
from mnist_dist.train.build import build_trainer  # noqa: E402
from mnist_dist.train.plan import EpochPlan  # noqa: E402
from mnist_dist.train.signals import StopRequest  # noqa: E402
from mnist_dist.train.stragglers import StepTimer, Stragglers  # noqa: E402

LENET = {"model": "lenet", "batch_size": 50, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "none"}
COLLECTIVE_REPEATS, COLLECTIVE_CALLS = 20, 100
CALLS = 20_000  # of the timer's calls and of the handling, for their microseconds


class NoTimer:
    """The loop's timer calls, doing nothing: the "off" variant."""

    forward = contextlib.nullcontext()

    def batches(self, loader):
        return loader

    def end_step(self) -> None:
        pass


class NoStragglers:
    def gathered(self, step: int, per_rank: list) -> bool:
        return False


class NoRows:
    """A dry run's tracker: the rows go nowhere."""

    def log(self, kind: str, step: int, row: dict) -> None:
        pass


class FlagsOnly(Agreement):
    """The ranks' check as it was before the step times: one all_reduce of the 3 flags."""

    def gather(self) -> tuple[list[bool], list]:
        nonfinite = ~torch.isfinite(self.sums.loss)
        local = [self.tracker.failure is not None, self.stop.signal_name is not None]
        flags = torch.cat([nonfinite.double().view(1), torch.tensor(local, dtype=torch.float64)])
        return [value > 0 for value in self.accelerator.reduce(flags, "sum").tolist()], []


def check_microseconds(accelerator) -> dict:
    """The check's collective alone: the old all_reduce of 3 flags and the all_gather of 7 numbers a rank."""
    calls = {
        "all_reduce_3": lambda: accelerator.reduce(torch.zeros(3, dtype=torch.float64), "sum").tolist(),
        "all_gather_7": lambda: accelerator.gather(torch.zeros(7, dtype=torch.float64)).tolist(),
    }
    return collective_microseconds(calls, COLLECTIVE_REPEATS, COLLECTIVE_CALLS, accelerator.wait_for_everyone)


def timer_microseconds() -> float:
    """The timer's calls in one step of one batch (CPU), beyond the loop's own: microseconds."""
    seconds = {}
    for variant in ("bare", "timer", "bare", "timer"):  # the second of each counts: warm
        timer, started = (NoTimer() if variant == "bare" else StepTimer()), time.perf_counter()
        for _ in timer.batches(range(CALLS)):
            with timer.forward:
                pass
            timer.end_step()
        seconds[variant] = (time.perf_counter() - started) / CALLS
    return (seconds["timer"] - seconds["bare"]) * 1e6


def handling_microseconds() -> float:
    """Stragglers.gathered for 2 ranks, a row (and its judging) every 5th check: microseconds a check."""
    watch = Stragglers(StepTimer(), ["a", "b"], TrainingConsole(False), NoRows(), 50, 0)
    times = [[0.001, 0.02, 0.06, 10.0], [0.001, 0.02, 0.06, 10.0]]
    started = time.perf_counter()
    for check in range(1, CALLS + 1):
        watch.gathered(check * 10, times)
    return (time.perf_counter() - started) / CALLS * 1e6


def worker(rounds: int, steps: int, data_dir: str) -> None:
    config = make_config(
        {"dataset": "fashion-mnist", "data_dir": data_dir, "loader": "resident", "wandb": "disabled"}
        | {"dry_run": True, "epochs": 1000, "log_every": 50, **LENET}
    )
    accelerator = build_accelerator(config)
    data = load_dataset(config.dataset, config.data_dir, config.data_file, download=True)
    trainer = build_trainer(config, accelerator, data, {}, {}, StopRequest())
    trainer.console.enabled = False  # no progress lines
    parts = {"on": (trainer.timer, trainer.agreement)}
    old = FlagsOnly(accelerator, trainer.sums, trainer.tracker, trainer.stop, trainer.checkpoints, NoStragglers())
    parts["off"] = (NoTimer(), old)
    ms_per_step: dict[str, list[float]] = {"on": [], "off": []}
    for index in range(rounds + 1):  # the first round is a warm-up
        for variant in ("on", "off") if index % 2 else ("off", "on"):
            trainer.timer, trainer.agreement = parts[variant]
            accelerator.wait_for_everyone()
            seconds = trainer.train_epoch(EpochPlan(epoch=index, skip_batches=0, first_step=1, last_step=steps))
            if index:
                ms_per_step[variant].append(seconds["seconds"] / steps * 1000)
    parts_us = check_microseconds(accelerator) | {"timer_us": timer_microseconds()}
    parts_us["handling_us"] = handling_microseconds()
    if accelerator.is_main_process:
        print(json.dumps({"ms_per_step": ms_per_step, "parts": parts_us}))
    trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps a burst")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/stragglers.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args.rounds, args.steps, args.data_dir)
    options = ["--worker", "--rounds", str(args.rounds), "--steps", str(args.steps), "--data-dir", args.data_dir]
    command = train_command(options, processes=2, script=Path(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    measured = json.loads(output.strip().splitlines()[-1])
    on, off = measured["ms_per_step"]["on"], measured["ms_per_step"]["off"]
    costs = sorted(a / b - 1 for a, b in zip(on, off))
    results = {"machine": machine(), "torch": torch.__version__, "rounds": args.rounds, "steps": args.steps}
    results |= {"on_ms_per_step": statistics.median(on), "off_ms_per_step": statistics.median(off)}
    results |= {"cost": statistics.median(costs), "cost_quartiles": statistics.quantiles(costs, n=4)}
    parts = measured["parts"]
    per_step_us = parts["timer_us"] + (parts["all_gather_7_us"] - parts["all_reduce_3_us"] + parts["handling_us"]) / 10
    results |= {**parts, "estimate": per_step_us / 1000 / results["off_ms_per_step"]}
    results |= {"rounds_ms_per_step": measured["ms_per_step"]}
    print(f"2 processes, lenet, batch 50 a process, {args.rounds} rounds of {args.steps} steps each way")
    print(f"  off (no timer, all_reduce of 3 flags): {results['off_ms_per_step']:.3f} ms per step (median)")
    print(f"  on  (timer, all_gather of 7 a rank):   {results['on_ms_per_step']:.3f} ms per step (median)")
    quartiles = ", ".join(f"{value:+.2%}" for value in results["cost_quartiles"])
    print(f"  cost on/off - 1 per round: median {results['cost']:+.2%} (quartiles {quartiles})")
    print(f"  the check's collective: all_reduce of 3 {parts['all_reduce_3_us']:.0f} us, ", end="")
    print(f"all_gather of 7 a rank {parts['all_gather_7_us']:.0f} us (median, every 10 steps)")
    print(f"  the timer's calls {parts['timer_us']:.2f} us a step; the handling {parts['handling_us']:.1f} us a check")
    print(f"  the parts' sum: {per_step_us:+.1f} us a step, {results['estimate']:+.3%} of the off step")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
