"""The checks in order, on every rank, and how the check ends.

    check(config, sources, options)   form the group, run the checks, print the table (and --json), leave

The launch comes first: on a wrong one (N single-process runs) the rest would measure the wrong group,
so it stops there. The all-reduce, shards, equivalence and step time follow; each collective that fails
because another process stopped responding or ended fails the check it was part of.
"""

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.atomic import WriteFailed
from mnist_dist.check.allreduce import all_reduce_rows
from mnist_dist.check.equivalence import compare, equivalence_row
from mnist_dist.check.launch import form_group, launch_rows
from mnist_dist.check.report import CheckFailed, Report
from mnist_dist.check.shards import shard_rows
from mnist_dist.check.steptime import step_time_rows
from mnist_dist.config import Config
from mnist_dist.data.datasets import load_dataset_main_first
from mnist_dist.distributed import collective_timeout, fail_together, lost_peer
from mnist_dist.errors import ConfigError, first_line
from mnist_dist.train.build import DataAndModel
from mnist_dist.train.job import leave_group, resolve


@contextmanager
def checking(name: str, config: Config, accelerator: Accelerator) -> Iterator[None]:
    """A collective inside that fails because another process stopped responding or ended fails check `name`."""
    try:
        yield
    except Exception as error:
        if not lost_peer(error):
            raise
        seconds = collective_timeout(config, accelerator.device.type).total_seconds()
        why = (
            f"another process stopped responding or ended ({first_line(error).rstrip('.')}; a collective waits at most "
            f"{seconds:g} s, --collective-timeout): its own output says why"
        )
        raise CheckFailed(name, why, same_on_every_rank=False) from None


def steps_fit(steps: int, parts: DataAndModel, config: Config) -> None:
    """The compared steps are the job's first, inside its first epoch: there must be as many."""
    available = min(parts.length.steps_per_epoch, parts.length.total_steps)
    if steps > available:
        raise ConfigError(
            f"--steps {steps} is more than the {available} steps the job takes in its first epoch ({config.dataset}, "
            f"batch {config.batch_size} a process, --max-steps {config.max_steps}): pass --steps {available} or fewer."
        )


def training_checks(report: Report, accelerator: Accelerator, config: Config, steps: int) -> None:
    """The shards, equivalence and step time, on the parts train/build.py makes for train.py."""
    with checking("shards", config, accelerator):
        data = load_dataset_main_first(config, accelerator)
        parts = DataAndModel(config, accelerator, data)
    try:
        steps_fit(steps, parts, config)
        with checking("shards", config, accelerator):
            report.add(shard_rows(parts.loader, data.train, config.dataset, accelerator))
        with checking("equivalence", config, accelerator):
            numbers = compare(parts, config, accelerator, steps)
            global_batch = config.batch_size * config.grad_accum_steps * accelerator.num_processes
            report.add([equivalence_row(config, steps, global_batch, gather_object([numbers]))])
        with checking("step time", config, accelerator):
            report.add(step_time_rows(parts, config, accelerator))
    finally:
        parts.wrapped = None  # the DDP wrapper, which holds the process group (train/job.py, leave_group)


def run_checks(
    report: Report, accelerator: Accelerator, config: Config, sources: dict, options: argparse.Namespace
) -> None:
    """The checks in order, their rows into `report`; after a wrong launch, none but its rows."""
    with checking("launch", config, accelerator):
        report.add(launch_rows(accelerator, options.expect_processes))
    if report.failure is not None:  # the rest would measure the wrong group
        return
    with checking("all-reduce", config, accelerator):
        report.add(all_reduce_rows(accelerator, options.sizes))
    with checking("launch", config, accelerator):  # train.py's batch size a process, the same on every rank
        config = resolve(config, accelerator, dict(sources))
    training_checks(report, accelerator, config, options.steps)


def publish(report: Report, accelerator: Accelerator, json_path: Path | None) -> None:
    """The table and --json on the main process. Once the checks have run, every rank then waits for them
    (one gather): a launcher ends the other ranks as soon as one exits, which must not cut the table off;
    and a --json that cannot be written ends every rank with its line."""
    failure = None
    if accelerator.is_main_process:
        report.show()
        try:
            if json_path is not None:
                report.write_json(json_path)
        except WriteFailed as error:
            failure = error
    if report.stopped is None:  # else a rank may have gone: its error is the one to say
        fail_together(accelerator, failure)


def check(config: Config, sources: dict[str, str], options: argparse.Namespace) -> None:
    """Every check on every rank; the table on the main process (and --json); CheckFailed for the first
    check that does not hold."""
    accelerator = form_group(config)
    report = Report(accelerator.num_processes)
    try:
        run_checks(report, accelerator, config, sources, options)
    except Exception as error:
        report.stopped = first_line(error)  # the table and the JSON say how far it came
        raise
    finally:
        try:
            publish(report, accelerator, options.json)
        finally:
            leave_group(accelerator)
    report.raise_failure()
