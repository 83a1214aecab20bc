"""What resuming trusts. A checkpoint: every stored field checked against the run's own plan and model,
so that a damaged or tampered checkpoint is skipped (--resume auto) or refused (a named one) before
anything of the run changes, never trained on; each check returns why it cannot be trusted, or None,
and checkpoint/reader.py has the ranks agree on the verdict. A run folder with no checkpoint to resume
from: a new run only if it holds no record of training (refuse_a_silent_restart).
"""

import json
import math
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_dist.checkpoint.layout import CHECKPOINT_NAME, COMPLETE, FINAL_FILES, step_of
from mnist_dist.checkpoint.state import TrainingState, rng_states, set_rng_states
from mnist_dist.config import Config
from mnist_dist.errors import UserError


def state_mismatch(path: Path, state: TrainingState, batches_per_epoch: int, grad_accum_steps: int) -> str | None:
    """state.json against the folder's name and the run's plan: a run takes ceil(batches / grad_accum)
    optimizer steps per epoch, so the step follows from the epoch and the batches done in it (the batch
    size, accumulation, dataset and world size that fix the plan are checked by reader.check_fits)."""
    named = step_of(path)
    if named is not None and named != state.step:
        return f"state.json says step {state.step}, its folder {path.name}"
    if state.batches_done > batches_per_epoch:
        return f"batches_done is {state.batches_done}, an epoch has {batches_per_epoch} batches"
    steps_per_epoch = math.ceil(batches_per_epoch / grad_accum_steps)
    expected = state.epoch * steps_per_epoch + math.ceil(state.batches_done / grad_accum_steps)
    if state.step != expected:
        return (
            f"step {state.step} does not follow from epoch {state.epoch} and batches_done {state.batches_done} "
            f"({steps_per_epoch} steps per epoch: step {expected})"
        )
    if not state.evaluated_step <= state.step or not -1 <= state.best_step <= state.step:
        return f"evaluated_step {state.evaluated_step} or best_step {state.best_step} lies after step {state.step}"
    if not (state.best_accuracy == -1.0 or 0.0 <= state.best_accuracy <= 1.0):
        return f"best_accuracy is {state.best_accuracy}, not an accuracy"
    return None


def weights_mismatch(weights: dict[str, torch.Tensor], module: torch.nn.Module) -> str | None:
    """Weights of another model (names, shapes or dtypes that differ from this run's model)."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        return f"its weights are another model's (missing {missing[:3]}, unexpected {unexpected[:3]})"
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape or weights[name].dtype != tensor.dtype:
            found = f"{tuple(weights[name].shape)} {weights[name].dtype}"
            return f"its weights are another model's ({name}: {found}, this model {tuple(tensor.shape)} {tensor.dtype})"
    return None


def optimizer_mismatch(saved: object, optimizer: torch.optim.Optimizer) -> str | None:
    """An optimizer state of other parameters: other groups, or a buffer of another shape than its parameter's."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        return "its optimizer state is not a mapping of states"
    groups = saved.get("param_groups")
    ours = [len(group["params"]) for group in optimizer.param_groups]
    if not isinstance(groups, list) or not all(
        isinstance(group, dict) and isinstance(group.get("params"), list) for group in groups
    ):
        return "its optimizer's parameter groups are not lists of parameters"
    if [len(group["params"]) for group in groups] != ours:
        return "its optimizer holds other parameter groups than this model's"
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    for index, buffers in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(parameters) or not isinstance(buffers, dict):
            return f"its optimizer state has an entry {index!r} for no parameter"
        for name, value in buffers.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameters[index].shape:
                return f"its optimizer's {name} of parameter {index} has shape {tuple(value.shape)}"
    return None


def scheduler_mismatch(saved: object, scheduler) -> str | None:
    if not isinstance(saved, dict) or set(scheduler.state_dict()) - set(saved):
        return "its lr schedule is another kind than this run's"
    return None


def epoch_sums_mismatch(sums: object, state: TrainingState, batch_size: int) -> str | None:
    """A rank's running sums of the epoch in progress: a float64 loss sum, int64 counts, as many samples
    as the batches done can hold at most; and where the epoch's last metrics row was (train/results.py)."""
    if not isinstance(sums, dict):
        return "its epoch_sums are not a mapping"
    kinds = {"loss": torch.float64, "correct": torch.int64, "samples": torch.int64}
    kinds |= {name: kind for name, kind in (("row_loss", torch.float64), ("row_samples", torch.int64)) if name in sums}
    if not all(
        isinstance(sums.get(name), torch.Tensor) and sums[name].dim() == 0 and sums[name].dtype == kind
        for name, kind in kinds.items()
    ):
        return f"its epoch_sums are not {', '.join(kinds)} numbers"
    values = {name: sums[name].item() for name in kinds}
    loss, correct, samples = values["loss"], values["correct"], values["samples"]
    # Rank 0 of a run resumed on another number of processes holds every old rank's samples (resize.py).
    most = state.batches_done * batch_size * state.world_size
    fits = math.isfinite(loss) and loss >= 0 and 0 <= correct <= samples <= most
    if not fits or not 0 <= values.get("row_samples", 0) <= samples or not 0 <= values.get("row_loss", 0) <= loss:
        return f"its epoch_sums ({values}) do not fit {state.batches_done} batches"
    return None


def rng_mismatch(states: object) -> str | None:
    """RNG states that cannot be set: tried here and undone, so that a bad one is found before any change."""
    mine = rng_states()
    try:
        set_rng_states(states)
    except Exception as error:  # a probe, undone below: whatever a tampered state makes torch or numpy raise
        return f"its RNG states cannot be restored ({type(error).__name__})"
    finally:
        set_rng_states(mine)
    return None


class NothingToResume(UserError):
    """A run folder that has trained before holds no checkpoint to continue from."""

    same_on_every_rank = True  # the main process looks and tells the others (refuse_a_silent_restart)


def refuse_a_silent_restart(config: Config, accelerator: Accelerator, steps_per_epoch: int) -> None:
    """Under --resume auto, with no checkpoint loaded: a run folder that has trained before (its final files,
    checkpoints that were there, metrics logged past the first checkpoint) must not start again from step 0
    over its records (a purged scratch, an unmounted checkpoints/): refuse, having changed nothing."""
    evidence = [None]
    if accelerator.is_main_process:
        try:
            evidence = [trained_before(config.run_path, config, steps_per_epoch)]
        except OSError as error:  # an unreadable folder: not proof of training, but no fresh start over it either
            evidence = [f"its files cannot be read: {error.strerror or error}"]
    broadcast_object_list(evidence)  # the main process looks, every rank refuses alike
    if evidence[0]:
        raise NothingToResume(
            f"run folder {config.run_dir} has trained before ({evidence[0]}) but holds no checkpoint to resume "
            "from; nothing was changed. Restore its checkpoints/, or start over with --resume none (its "
            "records are replaced) or another --run-name."
        )


def trained_before(run_dir: Path, config: Config, steps_per_epoch: int) -> str | None:
    """What shows that `run_dir` trained past its first checkpoint, or None."""
    found = [name for name in FINAL_FILES if (run_dir / name).exists()]
    folder = run_dir / "checkpoints"
    if folder.is_symlink() and not folder.exists():
        found.append(f"checkpoints/ is a link to {os.readlink(folder)}, which does not exist")
    elif any(CHECKPOINT_NAME.fullmatch(path.name) and (path / COMPLETE).exists() for path in folder.glob("step-*")):
        found.append("checkpoints/ whose checkpoints were all skipped")
    saves = [config.checkpoint_every] if config.checkpoint_every else []
    first_save = min(saves + ([steps_per_epoch] if config.checkpoint_epochs else []), default=None)
    # Training goes on after a save only once it is published: a row past the first save means there was one.
    last_logged = last_logged_step(run_dir / "metrics.jsonl")
    if first_save is not None and last_logged > first_save:
        found.append(f"metrics.jsonl logged up to step {last_logged}")
    return ", ".join(found) or None


def last_logged_step(path: Path) -> int:
    """The highest step of a metrics.jsonl (0 when there is none): rows are JSON objects with a "step"."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return 0
    steps = [0]
    for line in lines:
        try:
            row = json.loads(line)
            steps.append(int(row["step"]))
        except (ValueError, KeyError, TypeError, OverflowError):  # OverflowError: a step of 1e999
            continue  # a line cut short by a crash
    return max(steps)
