"""Resuming: which checkpoints --resume may continue from, reading one and checking that it fits
this run, then restoring it; under --resume auto a damaged one is skipped for the one before it.

A checkpoint holds the `TrainingState` (state.json: JSON, so anyone can read it), the weights
(safetensors: loading runs no code), the optimizer, schedule and grad-scaler states and each
rank's RNG states and epoch sums (torch.load with weights_only=True: a crafted pickle is refused).
checkpoint/writer.py writes them.
"""

import json
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.optim.lr_scheduler import LRScheduler

from mnist_dist.checkpoint import trust
from mnist_dist.checkpoint.layout import COMPLETE, complete_checkpoints, newest_checkpoint
from mnist_dist.checkpoint.resize import Layout, convert_state, merged_sums, saved_layout
from mnist_dist.checkpoint.state import COUNTERS, LATER_FIELDS, TrainingState, set_rng_states
from mnist_dist.config import Config
from mnist_dist.errors import UserError, first_line

# Options that fix which samples each step sees: a resumed run must keep them.
# (And the global batch: check_fits.)
MUST_MATCH = ("model", "dataset", "val_size", "seed")
# Schedules whose shape is planned for the run's total steps: these options must match too.
PLANNED_SCHEDULES = ("onecycle", "cosine")
DELETE_IT = "delete that checkpoint or pass --resume none."


class DamagedCheckpoint(UserError):
    """A checkpoint whose files are missing, cut short, or hold what this program never writes."""

    same_on_every_rank = True  # the ranks agree on it before anyone says it (reader.resume)


def load_data(path: Path) -> dict:
    """torch.load restricted to tensors and plain data: a crafted pickle is refused, never run."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DamagedCheckpoint(
            f"refusing to load {path}: it holds more than tensors and plain data ({first_line(error)}). "
            "Use a checkpoint this program wrote, or --resume none."
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise DamagedCheckpoint(f"checkpoint file {path} is unreadable ({first_line(error)}); {DELETE_IT}") from None
    if not isinstance(data, dict):
        raise DamagedCheckpoint(f"checkpoint file {path} holds a {type(data).__name__}, not a mapping; {DELETE_IT}")
    return data


def state_from_json(saved: dict) -> TrainingState:
    """A TrainingState from state.json, each field of its type (and not negative where it counts)."""
    values = {}
    for field in fields(TrainingState):
        later = field.name in LATER_FIELDS and field.name not in saved
        value = LATER_FIELDS[field.name](saved) if later else saved[field.name]
        kinds = (int, float) if field.type is float else field.type  # an int is a float too (best_accuracy 1)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TypeError(f"{field.name} is {value!r}, not {field.type}")
        if field.name in COUNTERS and value < 0 or field.name == "world_size" and value < 1:
            raise ValueError(f"{field.name} is {value}")
        if field.name == "world_size_changes" and not all(map(is_world_size_change, value)):
            raise ValueError(f"world_size_changes is {value!r}")
        values[field.name] = value
    return TrainingState(**values)


def is_world_size_change(change: object) -> bool:
    """{"step": 120, "from": 2, "to": 1}: a resume on another number of processes (checkpoint/resize.py)."""
    if not isinstance(change, dict) or set(change) != {"step", "from", "to"}:
        return False
    return all(type(value) is int and value >= 0 for value in change.values())


def read_state(path: Path) -> tuple[TrainingState, dict]:
    """The training state of the checkpoint at `path` and the config it was written with."""
    try:
        saved = json.loads((path / "state.json").read_text())
        config = saved["config"]
        if not isinstance(config, dict):
            raise TypeError(f"config is {config!r}")
        for key in ("batch_size", "grad_accum_steps"):  # the layout of the global batch (checkpoint/resize.py)
            if type(config[key]) is not int or config[key] < 1:
                raise ValueError(f"config {key} is {config[key]!r}")
        return state_from_json(saved), config
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise DamagedCheckpoint(
            f"checkpoint {path} has no valid state.json ({type(error).__name__}: {error}); {DELETE_IT}"
        ) from None


def peek_layout(paths: list[Path]) -> Layout | None:
    """The layout of the first of `paths` whose state.json is valid, from it alone (before the data and
    the model exist; the rest of the checkpoint is read and checked by read_checkpoint), or None."""
    for path in paths:
        try:
            return saved_layout(*read_state(path))
        except DamagedCheckpoint:
            continue
    return None


def check_fits(path: Path, state: TrainingState, saved: dict, config: Config, world_size: int) -> None:
    """Refuse a checkpoint that this run cannot continue exactly, naming the option that differs. The global
    batch must hold; how it is split (processes, per-process batch, accumulation) may differ: a step trains the
    same samples (checkpoint/resize.py; train/job.py chose this run's split for another number of processes)."""
    ours = Layout(world_size, config.batch_size, config.grad_accum_steps)
    theirs = saved_layout(state, saved)
    if theirs.global_batch != ours.global_batch:
        raise UserError(
            f"checkpoint {path} was written with a global batch of {theirs.global_batch} ({theirs.world_size} "
            f"processes x {theirs.batch_size} x {theirs.grad_accum_steps} accumulated), this run has "
            f"{ours.global_batch}: use the same options, another --run-dir, or --resume none."
        )
    for key in MUST_MATCH:
        if saved.get(key) != getattr(config, key):
            raise UserError(
                f"checkpoint {path} was written with {key}={saved.get(key)!r}, this run has "
                f"{getattr(config, key)!r}: use the same options, another --run-dir, or --resume none."
            )
    if config.schedule in PLANNED_SCHEDULES:
        for key in ("epochs", "max_steps", "schedule"):
            if saved.get(key) != getattr(config, key):
                raise UserError(
                    f"checkpoint {path} was written with {key}={saved.get(key)!r}, this run has "
                    f"{getattr(config, key)!r}; the {config.schedule} schedule cannot be "
                    "stretched: keep the options, or use another --run-dir or --resume none."
                )


@dataclass
class Target:
    """What a checkpoint is loaded into, and must fit: this run's bare model, optimizer and schedule, and
    the samples of its training split (with the batch sizes, the plan of an epoch)."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    train_samples: int


@dataclass
class Loaded:
    """A checkpoint read into memory and checked, before anything of this run changes."""

    path: Path
    state: TrainingState
    weights: dict
    training: dict  # optimizer, scheduler and grad-scaler states
    rank_state: dict  # this rank's RNG states and epoch sums
    best: dict | None  # the weights of the best validation accuracy so far (None before the first)
    resized: str | None = None  # on another number of processes: what changed (checkpoint/resize.py)


def read_weights(path: Path) -> dict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise DamagedCheckpoint(f"cannot load the weights in {path} ({first_line(error)}); {DELETE_IT}") from None


def read_checkpoint(path: Path, config: Config, accelerator: Accelerator, target: Target) -> Loaded:
    """Every file this rank needs from the checkpoint at `path`, each field checked against the run (its
    plan, model, optimizer and schedule: checkpoint/trust.py): DamagedCheckpoint if one cannot be read
    or trusted, UserError if the checkpoint belongs to other options. A checkpoint of another number of
    processes is read in this run's terms (checkpoint/resize.py)."""
    state, saved_config = read_state(path)
    check_fits(path, state, saved_config, config, accelerator.num_processes)
    saved = saved_layout(state, saved_config)
    plan = (saved.batches_per_epoch(target.train_samples), saved.grad_accum_steps)
    distrust(path, trust.state_mismatch(path, state, *plan))
    weights = read_weights(path / "model.safetensors")
    best = read_weights(path / "best.safetensors") if state.best_step >= 0 else None
    training = load_data(path / "training.pt")
    if "optimizer" not in training or "scheduler" not in training or "scaler" not in training:
        raise DamagedCheckpoint(f"checkpoint {path} lacks its optimizer, scheduler or scaler state; {DELETE_IT}")
    rank_files = read_rank_files(path, state, saved.batch_size, accelerator)
    problem = (
        trust.weights_mismatch(weights, target.module)
        or (trust.weights_mismatch(best, target.module) if best is not None else None)
        or trust.optimizer_mismatch(training["optimizer"], target.optimizer)
        or trust.scheduler_mismatch(training["scheduler"], target.scheduler)
    )
    distrust(path, problem)
    rank, now = accelerator.process_index, Layout(accelerator.num_processes, config.batch_size, config.grad_accum_steps)
    if saved == now:
        return Loaded(path, state, weights, training, rank_files[rank], best)
    state = convert_state(state, saved, now, target.train_samples)  # the batches done, in this run's batches
    if saved.world_size == now.world_size:  # the same ranks, another split of their batches
        return Loaded(path, state, weights, training, rank_files[rank], best)
    own = rank_files[rank % saved.world_size]
    sums = merged_sums([rank_files[old_rank] for old_rank in sorted(rank_files)], rank)
    resized = f"from {saved.world_size} processes to {now.world_size} at step {state.step}"
    return Loaded(path, state, weights, training, {"rng": own["rng"], "epoch_sums": sums}, best, resized)


def read_rank_files(path: Path, state: TrainingState, batch_size: int, accelerator: Accelerator) -> dict[int, dict]:
    """The rank files this rank needs, by old rank, each checked: its own (rank-R.pt); on another number of
    processes, the one whose RNG it takes (R mod the old world size), and on the main process all of them,
    whose epoch sums it merges."""
    rank, old_world = accelerator.process_index, state.world_size
    if old_world == accelerator.num_processes:
        wanted = [rank]
    else:
        wanted = sorted({rank % old_world, *(range(old_world) if accelerator.is_main_process else ())})
    files = {}
    for old_rank in wanted:
        files[old_rank] = load_data(path / f"rank-{old_rank}.pt")
        if {"rng", "epoch_sums"} - set(files[old_rank]):
            raise DamagedCheckpoint(f"checkpoint {path} lacks rng or epoch_sums in rank-{old_rank}.pt; {DELETE_IT}")
        problem = trust.epoch_sums_mismatch(files[old_rank]["epoch_sums"], state, batch_size)
        distrust(path, problem or trust.rng_mismatch(files[old_rank]["rng"]))
    return files


def distrust(path: Path, problem: str | None) -> None:
    if problem:
        raise DamagedCheckpoint(f"checkpoint {path} cannot be trusted: {problem}; {DELETE_IT}")


def apply_checkpoint(loaded: Loaded, target: Target, accelerator: Accelerator) -> None:
    """Weights, optimizer, schedule, grad scaler and this rank's RNG states, from a checkpoint read and
    checked before."""
    module, optimizer, scheduler = target.module, target.optimizer, target.scheduler
    # load_state_dict takes the saved groups' flags too; keep this run's kernels (fused or not).
    kernels = [{key: group[key] for key in ("fused", "foreach") if key in group} for group in optimizer.param_groups]
    training = loaded.training
    try:
        module.load_state_dict(loaded.weights)
        optimizer.load_state_dict(training["optimizer"])
        for group, keep in zip(optimizer.param_groups, kernels):
            group.update(keep)
        scheduler.load_state_dict(training["scheduler"])
        if accelerator.scaler is not None and training["scaler"]:
            accelerator.scaler.load_state_dict(training["scaler"])
        set_rng_states(loaded.rank_state["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise DamagedCheckpoint(
            f"checkpoint {loaded.path} holds unexpected training state ({type(error).__name__}: "
            f"{first_line(error)}); {DELETE_IT}"
        ) from None


def candidates(config: Config) -> list[Path]:
    """What --resume may continue from, the preferred first: auto, every complete checkpoint of the run
    folder, newest first; a run folder, its newest; a checkpoint folder, itself; none, nothing."""
    if config.resume == "none":
        return []
    if config.resume == "auto":
        return complete_checkpoints(config.run_path / "checkpoints")[::-1]
    path = Path(config.resume)
    newest = newest_checkpoint(path)  # a run dir: its newest checkpoint
    if newest is not None:
        return [newest]
    if not (path / COMPLETE).is_file():
        raise UserError(
            f"--resume {config.resume}: no complete checkpoint there (a folder such as runs/NAME/checkpoints/"
            "step-000120 holding a COMPLETE file). Pass auto, none, or such a folder."
        )
    return [path]


def resume(config: Config, accelerator: Accelerator, target: Target, say: Callable[[str], None]) -> Loaded | None:
    """Restore the newest checkpoint that every rank can read and trust into `target` and return what it
    held; None when there is none (or a dry run, which reads none). --resume auto skips a damaged one with
    a warning through `say`, leaving it on disk; a named one must load."""
    strict = config.resume != "auto"
    for path in candidates(config) if config.writes_files else []:
        loaded, failure = None, None
        try:
            loaded = read_checkpoint(path, config, accelerator, target)
        except DamagedCheckpoint as error:
            failure = str(error)
        failures = [text for text in gather_object([failure]) if text]  # one collective: the ranks agree
        if failures and strict:
            accelerator.wait_for_everyone()  # all ranks leave together (see distributed.fail_together)
            raise DamagedCheckpoint(failures[0])
        if failures:
            say(f"warning: skipping checkpoint {path}: {failures[0]}")
            continue
        apply_checkpoint(loaded, target, accelerator)
        return loaded
    if config.resume == "auto" and config.writes_files:
        layout = Layout(accelerator.num_processes, config.batch_size, config.grad_accum_steps)
        steps_per_epoch = math.ceil(target.train_samples / layout.global_batch)  # any world size (resize.py)
        trust.refuse_a_silent_restart(config, accelerator, steps_per_epoch)
    return None
