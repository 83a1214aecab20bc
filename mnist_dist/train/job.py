"""One training job from a parsed config: resolve it, lock its folder, build the trainer (resumed from a
checkpoint where there is one), fit, write the final files, always clean up.

    train()          the job, start to end
    Job.start()      start-up, phase by phase, a stop signal honoured between the phases
    resolve()        the run's final config, the same on every rank

Stop signals count from the process's start (commands.train installs the handlers, train/signals.py).
Before the first step the ranks agree after each start-up phase whether one came, and all end there
with one line (nothing to save yet); in the loop they checkpoint first; during the final evaluation and
writes the job finishes them, then ends with its line.

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
from mnist_dist.checkpoint.reader import PLANNED_SCHEDULES, candidates, peek_layout
from mnist_dist.checkpoint.resize import fit_to_checkpoint
from mnist_dist.checkpoint.run_lock import RunInUse, RunLock
from mnist_dist.cli import yaml_text
from mnist_dist.config import Config, stop_signal_names
from mnist_dist.data.datasets import load_dataset_main_first
from mnist_dist.distributed import (
    build_accelerator,
    collective_timeout,
    device_type_of,
    fail_together,
    lost_peer,
    missed_rendezvous,
    write_on_main,
)
from mnist_dist.errors import STOPS, LostProcess, Preempted, first_line, write_error_log
from mnist_dist.tracking.facts import system_facts
from mnist_dist.tracking.wandb_media import log_stack_dumps
from mnist_dist.train.build import build_trainer
from mnist_dist.train.final import finish
from mnist_dist.train.loop import Trainer
from mnist_dist.train.signals import StopRequest
from mnist_dist.train.stacks import StackDumps
from mnist_dist.train.time_split import process_seconds


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


def lock_run_dir(config: Config, accelerator: Accelerator) -> tuple[RunLock | None, Exception | None]:
    """The main process takes the run directory's lock before anything is written: (the lock it holds, or
    None; why it was refused, or None). No collective: the job shares the refusal (Job.start), holding the
    lock first, so that a peer lost in that collective still finds it released when the job ends."""
    if not (config.writes_files and accelerator.is_main_process):
        return None, None
    lock = RunLock(config.run_path)
    try:
        lock.acquire()
    except RunInUse as error:
        return None, error
    except OSError as error:
        return None, WriteFailed(
            f"cannot write the run directory {config.run_dir} ({error.strerror}); free space or fix "
            "permissions there, or pass another --run-dir."
        )
    return lock, None


def keep_the_global_batch(config: Config, accelerator: Accelerator, sources: dict[str, str]) -> Config:
    """Resuming a checkpoint of another number of processes: this run's per-process batch and accumulation
    keep its global batch (checkpoint/resize.py), and the config table says why."""
    saved = peek_layout(candidates(config)) if config.writes_files else None
    config, why = fit_to_checkpoint(config, accelerator.num_processes, saved)
    if why:
        sources["batch_size"] = sources["grad_accum_steps"] = why
    return config


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


def lost_process_message(trainer: Trainer, reason: str, log: Path | None, answers: str = "") -> str:
    """What a user reads when a collective failed because another process stopped responding or ended.
    `answers`: which ranks wrote no stack dump, and where the others' are (StackDumps.after_lost_peer)."""
    kept = trainer.checkpoints.what_is_kept("the last complete checkpoint, {}, is intact")
    seconds = collective_timeout(trainer.config, trainer.accelerator.device.type).total_seconds()
    evidence = f"; the traceback is in {log}" if log else ""
    answers = f"{answers}; " if answers else ""
    return (
        f"another process stopped responding or ended, after step {trainer.state.step} ({answers}{reason}; a "
        f"collective waits at most {seconds:g} s, --collective-timeout{evidence}); {kept}: run the same command "
        "again to resume."
    )


def lost_at_start_message(config: Config, reason: str, log: Path | None, answers: str = "") -> str:
    """lost_process_message for a job that had not trained a step: forming the process group, or a
    collective of the start-up (the run's name, the lock, the data, the trainer's parts)."""
    seconds = collective_timeout(config, device_type_of(config)).total_seconds()
    evidence = f"; the traceback is in {log}" if log else ""
    answers = f"{answers}; " if answers else ""
    return (
        f"another process stopped responding or ended during start-up, before the first step ({answers}{reason}; a "
        f"collective waits at most {seconds:g} s, --collective-timeout{evidence}): nothing to checkpoint yet; "
        "run the same command again to start."
    )


def keep_evidence(config: Config | None, accelerator: Accelerator, error: BaseException) -> Path | None:
    """The full traceback of an error that is not one of the expected stops, in the run's folder
    (error-rank-R.log), so that neither a one-line message nor a scrolled-away terminal costs it."""
    if config is None or not config.writes_files:  # before the folder is known, or a dry run
        return None
    return write_error_log(config.run_path, accelerator.process_index, error)


class Job:
    """What one job holds while it runs, for its end: the Accelerator (the process group), the run
    folder's lock, the trainer; the stop request that the start-up, the loop and the end consult; the
    stack dumper, told where the job stands (train/stacks.py)."""

    def __init__(self, stop: StopRequest, stacks: StackDumps | None = None):
        self.stop = stop
        self.stacks = stacks or StackDumps()  # without the command's: dumps on a lost peer only
        self.accelerator: Accelerator | None = None
        self.lock: RunLock | None = None
        self.locked: Config | None = None  # the run's folder is this job's: an error's traceback may go there
        self.trainer: Trainer | None = None

    def start(self, config: Config, sources: dict[str, str]) -> Trainer:
        """The trainer, made phase by phase: the process group (the rendezvous), the run's config, the run
        folder's lock, the data, the trainer's parts. The signal handlers only set a flag, so a long phase
        runs on; after each, the ranks agree whether a stop signal reached any of them (one small gather)
        and, if one did, all end there together: a rank leaving alone would leave the others waiting."""
        self.accelerator = build_accelerator(config)
        config = resolve(config, self.accelerator, sources)
        self.stop_if_asked()
        self.lock, refusal = lock_run_dir(config, self.accelerator)
        fail_together(self.accelerator, refusal)  # a refused job ends on every rank with the same line
        self.locked = config
        self.stacks.follow(config, self.accelerator.device.type)  # dumps go to the run folder from now on
        self.stop_if_asked()  # the lock's release removes the run folder again if this job made it
        config = keep_the_global_batch(config, self.accelerator, sources)
        data = load_dataset_main_first(config, self.accelerator)
        self.stop_if_asked()
        self.trainer = build_trainer(config, self.accelerator, data, system_facts(self.accelerator), sources, self.stop)
        self.stacks.follow_state(self.trainer.state)
        self.stop_if_asked()
        return self.trainer

    def stop_if_asked(self) -> None:
        """All ranks end with the stop's one line (Preempted, said once) when any rank was asked to stop."""
        fail_together(self.accelerator, self.stop.before_first_step())

    def end(self, config: Config) -> None:
        """After the final files: a stop signal that came during the final evaluation and writes, on any
        rank, ends every rank with its line; they were finished, so the run's record is whole."""
        record = (
            f"so the run is complete in {config.run_dir} (model.safetensors, summary.json): the same command reports "
            "it finished"
            if config.writes_files
            else "a dry run writes no files"
        )
        fail_together(self.accelerator, self.stop.after_the_final_files(record))
        # No rank tears the process group down while another still talks in it: a gloo rank that
        # leaves early can abort the others ("terminate called without an active exception").
        self.accelerator.wait_for_everyone()

    def ending_of(self, config: Config, error: Exception) -> LostProcess | Preempted | None:
        """What an unexpected error ends the job with, its traceback kept in the run's folder first: None
        (its traceback) unless another process stopped responding or ended. Then LostProcess; during
        start-up, the stop this rank was asked for if it was (its line, once: a launcher or SLURM that ends
        one rank signals the others), else LostProcess's start-up line (no checkpoint to name). Every
        live rank writes its stack dump first, and the line names the ranks that wrote none."""
        log = keep_evidence(self.locked, self.accelerator, error)
        if not (lost_peer(error) or missed_rendezvous(error)):
            return None
        stopped = self.stop.before_first_step() if self.trainer is None else None
        if stopped is not None:
            return stopped
        answers = self.stacks.after_lost_peer(error)
        if self.trainer is None:
            return LostProcess(lost_at_start_message(config, first_line(error), log, answers))
        return LostProcess(lost_process_message(self.trainer, first_line(error), log, answers))

    def close(self) -> None:
        if self.trainer is not None:
            log_stack_dumps(self.trainer.tracker.wandb, self.stacks.written())  # W&B on: one artifact of the run
            self.trainer.close()
        self.stacks.tidy()  # before the lock's release, which removes a run folder left empty
        if self.lock is not None:
            self.lock.release()  # also removes a run directory this job made and left empty
        if self.accelerator is not None:  # None when the process group could not form
            leave_group(self.accelerator)


def train(
    config: Config,
    sources: dict[str, str] | None = None,
    stop: StopRequest | None = None,
    stacks: StackDumps | None = None,
) -> dict:
    """`sources`: what set each option (cli.parse_command_line), for the config table. `stop`: the
    command's StopRequest, its handlers installed since the process started (commands.train); without
    one, the job installs its own. `stacks`: the command's stack dumper (its signal waited for since the
    process started); without one, stacks are dumped on a lost peer only."""
    stop = stop or StopRequest(stop_signal_names(config.stop_signals))
    job = Job(stop, stacks)
    try:
        with stop:
            trainer = job.start(config, dict(sources or {}))
            if trainer.already_finished:
                return report_finished(trainer)
            save_config(trainer.config, job.accelerator)  # after the checkpoint was found to fit the options
            trainer.time_split.start_up = process_seconds()
            started = time.perf_counter()
            evaluation = trainer.fit()
            results = finish(trainer, evaluation, time.perf_counter() - started)
            job.end(trainer.config)
            return results
    except (*STOPS, KeyboardInterrupt):  # expected: each says what happened in its one line
        raise
    except Exception as error:  # a bug, or a failure of the machine or of another process
        ending = job.ending_of(config, error)
        if ending is None:
            raise
        raise ending from None
    finally:
        job.close()


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
