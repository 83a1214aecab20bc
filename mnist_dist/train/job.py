"""One training job from a parsed config: resolve it, lock its folder, build the trainer (resumed from a
checkpoint where there is one), fit, write the final files, always clean up.

    train()          the job, start to end
    resolve()        the run's final config, the same on every rank

The Trainer's parts are made by train/build.py; the loop is train/loop.py; the final files train/final.py.
"""

import dataclasses
import datetime
import gc
import json
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_dist.atomic import WriteFailed, write_atomically
from mnist_dist.checkpoint.reader import PLANNED_SCHEDULES
from mnist_dist.checkpoint.run_lock import RunInUse, RunLock
from mnist_dist.cli import yaml_text
from mnist_dist.config import Config
from mnist_dist.data.datasets import load_dataset_main_first
from mnist_dist.distributed import (
    build_accelerator,
    collective_timeout,
    fail_together,
    lost_peer,
    write_on_main,
)
from mnist_dist.errors import STOPS, LostProcess, first_line, write_error_log
from mnist_dist.tracking.facts import system_facts
from mnist_dist.train.build import build_trainer
from mnist_dist.train.final import finish
from mnist_dist.train.loop import Trainer


def resolve(config: Config, accelerator: Accelerator, sources: dict[str, str]) -> Config:
    """The run's final config, the same on every rank: its name and folder chosen, a dry run cut to one
    step, a recipe's batch size shared among the processes.

    The main process names the run (by the clock) and shares the name, so all ranks agree on the folder.
    A recipe's batch size is the whole job's (the tutorial's): on N processes each takes 1/N of it, so
    that a model learns the same with any number of processes. A batch size from a --config file or a
    flag is per process, as with torchrun and Lightning.
    """
    if sources.get("batch_size", "").startswith("recipe") and accelerator.num_processes > 1:
        share = max(1, round(config.batch_size / accelerator.num_processes))
        sources["batch_size"] += f" ({config.batch_size} over {accelerator.num_processes} processes)"
        config = dataclasses.replace(config, batch_size=share)
    if config.dry_run:
        config = dataclasses.replace(config, epochs=1, max_steps=1, wandb="disabled")
    name = [config.run_name or f"{config.model}-{config.dataset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"]
    broadcast_object_list(name)  # a no-op in a single process
    run_dir = str(Path(config.run_dir or Path("runs") / name[0]))  # as Path spells it: ./out/ -> out
    return dataclasses.replace(config, run_name=name[0], run_dir=run_dir)


def lock_run_dir(config: Config, accelerator: Accelerator) -> RunLock | None:
    """The main process takes the run directory's lock before anything is written; every rank learns
    whether it got it (distributed.fail_together), so that a refused job ends on every rank with the
    same line."""
    lock, refusal = None, None
    if config.writes_files and accelerator.is_main_process:
        lock = RunLock(config.run_path)
        try:
            lock.acquire()
        except RunInUse as error:
            refusal = error
        except OSError as error:
            refusal = WriteFailed(
                f"cannot write the run directory {config.run_dir} ({error.strerror}): pass a writable --run-dir."
            )
    fail_together(accelerator, refusal)
    return lock


def save_config(config: Config, accelerator: Accelerator) -> None:
    """config.yaml, written once the run is sure to train: a refused rerun leaves the old one as it was.
    The main process writes it; a failed write ends every rank with its one line."""
    write = lambda: write_atomically(config.run_path / "config.yaml", yaml_text(config))  # noqa: E731
    write_on_main(accelerator, write, enabled=config.writes_files)


def report_finished(trainer: Trainer) -> dict:
    """A finished run run again: say so and how to go on; return its summary, rewriting nothing."""
    config, state = trainer.config, trainer.state
    further = (
        f"the {config.schedule} schedule is planned for the steps it took, so train a new run for more"
        if config.schedule in PLANNED_SCHEDULES
        else "to train further, raise --epochs or --max-steps"
    )
    trainer.console.print(
        f"run {config.run_dir} has finished (step {state.step}, epoch {state.epoch}): nothing to do. "
        f"{further[0].upper()}{further[1:]}; to start over, pass --resume none or another --run-name."
    )
    return json.loads((config.run_path / "summary.json").read_text())


def lost_process_message(trainer: Trainer, reason: str, log: Path | None) -> str:
    """What a user reads when a collective failed because another process stopped responding or ended."""
    kept = trainer.checkpoints.what_is_kept("the last complete checkpoint, {}, is intact")
    seconds = collective_timeout(trainer.config, trainer.accelerator.device.type).total_seconds()
    evidence = f"; the traceback is in {log}" if log else ""
    return (
        f"another process stopped responding or ended, after step {trainer.state.step} ({reason}; a collective "
        f"waits at most {seconds:g} s, --collective-timeout{evidence}); {kept}: run the same command again to resume."
    )


def keep_evidence(config: Config | None, accelerator: Accelerator, error: BaseException) -> Path | None:
    """The full traceback of an error that is not one of the expected stops, in the run's folder
    (error-rank-R.log), so that neither a one-line message nor a scrolled-away terminal costs it."""
    if config is None or not config.writes_files:  # before the folder is known, or a dry run
        return None
    return write_error_log(config.run_path, accelerator.process_index, error)


def train(config: Config, sources: dict[str, str] | None = None) -> dict:
    """`sources`: what set each option (cli.parse_command_line), for the config table."""
    accelerator = build_accelerator(config)
    trainer = lock = locked = None
    try:
        sources = dict(sources or {})
        config = resolve(config, accelerator, sources)
        lock = lock_run_dir(config, accelerator)
        locked = config  # from here on, the run's folder is this job's: an error's traceback may go there
        data = load_dataset_main_first(config, accelerator)
        trainer = build_trainer(config, accelerator, data, system_facts(accelerator), sources)
        if trainer.already_finished:
            return report_finished(trainer)
        save_config(config, accelerator)  # after the checkpoint was found to fit the options
        started = time.perf_counter()
        evaluation = trainer.fit()
        results = finish(trainer, evaluation, time.perf_counter() - started)
        # No rank tears the process group down while another still talks in it: a gloo rank that
        # leaves early can abort the others ("terminate called without an active exception").
        accelerator.wait_for_everyone()
        return results
    except (*STOPS, KeyboardInterrupt):  # expected: each says what happened in its one line
        raise
    except Exception as error:  # a bug, or a failure of the machine or of another process
        log = keep_evidence(locked, accelerator, error)
        if trainer is None or not lost_peer(error):
            raise
        raise LostProcess(lost_process_message(trainer, first_line(error), log)) from None
    finally:
        if trainer is not None:
            trainer.close()
        if lock is not None:
            lock.release()  # also removes a run directory this job made and left empty
        leave_group(accelerator)


def leave_group(accelerator: Accelerator) -> None:
    """Destroy the process group now, with nothing left holding it.

    The DDP model (its reducer, and the gloo work of its communication hook) keeps the process group
    alive past destroy_process_group; it would then be freed at interpreter exit, where gloo's worker
    threads can abort the process ("terminate called without an active exception", seen on gloo
    after a run that had finished; pytorch/pytorch#190489). So Accelerate lets go of the prepared
    model and optimizer, the trainer has let go of it (Trainer.close: also while an exception's traceback
    still holds the trainer), the garbage is collected, and only then is the group destroyed.
    """
    accelerator.free_memory()  # Accelerate's references to the prepared (DDP-wrapped) model and optimizer
    gc.collect()  # the DDP model, which Trainer.close let go of (it may sit in a reference cycle)
    accelerator.end_training()  # also destroys the process group
