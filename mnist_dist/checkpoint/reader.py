"""Resuming: which checkpoints --resume may continue from, reading one and checking that it fits
this run, then restoring it; under --resume auto a damaged one is skipped for the one before it.

A checkpoint holds the `TrainingState` (state.json: JSON, so anyone can read it), the weights
(safetensors: loading runs no code), the optimizer, schedule and grad-scaler states and each
rank's RNG states and epoch sums (torch.load with weights_only=True: a crafted pickle is refused).
checkpoint/writer.py writes them.
"""

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file

from mnist_dist.checkpoint.layout import COMPLETE, complete_checkpoints, newest_checkpoint
from mnist_dist.checkpoint.state import COUNTERS, TrainingState, set_rng_states
from mnist_dist.config import Config
from mnist_dist.errors import UserError, first_line

# Options that fix which samples each step sees: a resumed run must keep them.
MUST_MATCH = ("model", "dataset", "val_size", "batch_size", "grad_accum_steps", "seed")
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
        value = saved[field.name]
        kinds = (int, float) if field.type is float else field.type  # an int is a float too (best_accuracy 1)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TypeError(f"{field.name} is {value!r}, not {field.type}")
        if field.name in COUNTERS and value < 0 or field.name == "world_size" and value < 1:
            raise ValueError(f"{field.name} is {value}")
        values[field.name] = value
    return TrainingState(**values)


def read_state(path: Path) -> tuple[TrainingState, dict]:
    """The training state of the checkpoint at `path` and the config it was written with."""
    try:
        saved = json.loads((path / "state.json").read_text())
        config = saved["config"]
        if not isinstance(config, dict):
            raise TypeError(f"config is {config!r}")
        return state_from_json(saved), config
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise DamagedCheckpoint(
            f"checkpoint {path} has no valid state.json ({type(error).__name__}: {error}); {DELETE_IT}"
        ) from None


def check_fits(path: Path, state: TrainingState, saved: dict, config: Config, world_size: int) -> None:
    """Refuse a checkpoint that this run cannot continue exactly, naming the option that differs.
    The number of processes first: a recipe's batch size is shared among them, so it differs too."""
    if state.world_size != world_size:
        raise UserError(
            f"checkpoint {path} was written by {state.world_size} processes, this run has "
            f"{world_size}: resume with the same number for an exact continuation."
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
class Loaded:
    """A checkpoint read into memory and checked, before anything of this run changes."""

    path: Path
    state: TrainingState
    weights: dict
    training: dict  # optimizer, scheduler and grad-scaler states
    rank_state: dict  # this rank's RNG states and epoch sums
    best: dict | None  # the weights of the best validation accuracy so far (None before the first)


def read_weights(path: Path) -> dict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise DamagedCheckpoint(f"cannot load the weights in {path} ({first_line(error)}); {DELETE_IT}") from None


def read_checkpoint(path: Path, config: Config, accelerator: Accelerator) -> Loaded:
    """Every file this rank needs from the checkpoint at `path`: DamagedCheckpoint if one cannot be read,
    UserError if the checkpoint belongs to other options."""
    state, saved_config = read_state(path)
    check_fits(path, state, saved_config, config, accelerator.num_processes)
    weights = read_weights(path / "model.safetensors")
    best = read_weights(path / "best.safetensors") if state.best_step >= 0 else None
    training = load_data(path / "training.pt")
    rank_state = load_data(path / f"rank-{accelerator.process_index}.pt")
    missing = {"optimizer", "scheduler", "scaler"} - set(training) or {"rng", "epoch_sums"} - set(rank_state)
    if missing:
        raise DamagedCheckpoint(f"checkpoint {path} lacks {', '.join(sorted(missing))}; {DELETE_IT}")
    return Loaded(path, state, weights, training, rank_state, best)


def apply_checkpoint(loaded: Loaded, module: torch.nn.Module, optimizer, scheduler, accelerator: Accelerator) -> None:
    """Weights, optimizer, schedule, grad scaler and this rank's RNG states, from a checkpoint read before."""
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


def resume(
    config: Config, accelerator: Accelerator, module: torch.nn.Module, optimizer, scheduler, say: Callable[[str], None]
) -> Loaded | None:
    """Restore the newest checkpoint that every rank can read into `module` (the bare model), `optimizer`
    and `scheduler` and return what it held; None when there is none (or a dry run, which reads none).
    --resume auto skips a damaged one with a warning through `say`, leaving it on disk; a named one must load."""
    strict = config.resume != "auto"
    for path in candidates(config) if config.writes_files else []:
        loaded, failure = None, None
        try:
            loaded = read_checkpoint(path, config, accelerator)
        except DamagedCheckpoint as error:
            failure = str(error)
        failures = [text for text in gather_object([failure]) if text]  # one collective: the ranks agree
        if failures and strict:
            accelerator.wait_for_everyone()  # all ranks leave together (see distributed.fail_together)
            raise DamagedCheckpoint(failures[0])
        if failures:
            say(f"warning: skipping checkpoint {path}: {failures[0]}")
            continue
        apply_checkpoint(loaded, module, optimizer, scheduler, accelerator)
        return loaded
    return None
