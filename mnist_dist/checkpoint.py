"""Checkpoints that resume exactly: written atomically, loaded without running any code.

    runs/<name>/checkpoints/
        step-000120/            one complete checkpoint
            model.safetensors   the unwrapped model's weights (safetensors: loading runs no code)
            training.pt         optimizer, lr-scheduler and grad-scaler states (loaded with weights_only=True)
            rank-0.pt ...       each rank's RNG states and running epoch sums (weights_only=True)
            state.json          step, epoch, position in the epoch, best accuracy, config, W&B run id
            COMPLETE            written last; a folder without it is ignored
        latest                  the name of the newest complete checkpoint

Accelerate's save_state is not used: it saves the DDP-wrapped model (keys prefixed `module.`)
and writes in place, while a checkpoint here must hold unwrapped weights and appear all at once.
"""

import json
import os
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mnist_dist.atomic import replace_atomically, write_atomically
from mnist_dist.checkpoint_files import COMPLETE, complete_checkpoints, newest_checkpoint, step_of
from mnist_dist.config import Config
from mnist_dist.errors import UserError

# Options that fix which samples each step sees: a resumed run must keep them.
MUST_MATCH = ("model", "dataset", "batch_size", "grad_accum_steps", "seed")


@dataclass
class TrainingState:
    """Where training stands. JSON, so anyone can read it."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress (or the next to start)
    batches_done: int = 0  # batches of `epoch` already trained, on each rank
    best_accuracy: float = -1.0
    best_step: int = -1
    epochs_since_best: int = 0
    world_size: int = 1
    wandb_run_id: str | None = None


def save_model(model: torch.nn.Module, config: Config, path: Path) -> None:
    """Write `model`'s weights with the resolved config in the file's metadata, atomically."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"config": json.dumps(config.to_dict())}
    replace_atomically(path, lambda temporary: save_file(state, str(temporary), metadata=metadata))


def rng_states() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_data(path: Path) -> dict:
    """torch.load restricted to tensors and plain data: a crafted pickle is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(
            f"refusing to load {path}: it holds more than tensors and plain data ({first_line}). "
            "Use a checkpoint this program wrote, or --resume none."
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise UserError(
            f"checkpoint file {path} is unreadable ({error}); delete that checkpoint or pass --resume none."
        ) from None


class Checkpointer:
    """Decides when to save, saves in a coordinated way across ranks, and finds what to resume."""

    def __init__(self, config: Config, accelerator: Accelerator, run_dir: Path | None):
        self.config = config
        self.accelerator = accelerator
        self.folder = run_dir / "checkpoints" if run_dir is not None else None

    def due_at_step(self, step: int) -> bool:
        return self.folder is not None and self.config.checkpoint_every > 0 and step % self.config.checkpoint_every == 0

    def due_at_epoch_end(self) -> bool:
        return self.folder is not None and self.config.checkpoint_epochs

    def save(self, state: TrainingState, module: torch.nn.Module, optimizer, scheduler, rank_state: dict) -> Path:
        """Every rank calls this at the same step. `module` is the bare model (not DDP- or compile-wrapped).
        Returns the new checkpoint's folder."""
        accelerator, rank = self.accelerator, self.accelerator.process_index
        final = self.folder / f"step-{state.step:06d}"
        partial = self.folder / f".partial-step-{state.step:06d}"
        failure = None
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier save
            try:
                partial.mkdir(parents=True)
            except OSError as error:
                failure = f"{type(error).__name__}: {error}"
        accelerator.wait_for_everyone()
        try:
            if failure is None and not partial.is_dir():
                failure = f"{partial} is not visible on rank {rank}: the run directory must be shared by all nodes"
            if failure is None:
                torch.save({**rank_state, "rng": rng_states()}, partial / f"rank-{rank}.pt")
                if accelerator.is_main_process:
                    save_model(module, self.config, partial / "model.safetensors")
                    scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else {}
                    torch.save(
                        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler},
                        partial / "training.pt",
                    )
                    (partial / "state.json").write_text(
                        json.dumps({**asdict(state), "config": self.config.to_dict()}, indent=2)
                    )
        except (OSError, RuntimeError, SafetensorError) as error:  # torch.save reports a full disk as RuntimeError
            failure = f"{type(error).__name__}: {error}"
        failures = gather_object([failure])
        if any(failures):
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            reason = next(f for f in failures if f)
            raise UserError(
                f"writing checkpoint {final} failed ({reason}); the previous checkpoints are intact. "
                "Free space or fix permissions under --run-dir, then resume."
            )
        if accelerator.is_main_process:
            (partial / COMPLETE).write_text("")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)  # the checkpoint appears all at once
            write_atomically(self.folder / "latest", final.name + "\n")
            self._prune(keep_best=state.best_step)
        accelerator.wait_for_everyone()
        return final

    def _prune(self, keep_best: int) -> None:
        """Delete all but the newest `keep_checkpoints` complete checkpoints and the best one."""
        complete = self.complete_checkpoints()
        keep = set(complete[-self.config.keep_checkpoints :])
        keep |= {path for path in complete if step_of(path) == keep_best}
        for path in complete:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.folder.glob(".partial-step-*"):  # left by saves that crashed
            shutil.rmtree(path, ignore_errors=True)

    def complete_checkpoints(self) -> list[Path]:
        return complete_checkpoints(self.folder)

    def find(self, resume: str) -> Path | None:
        """auto: the newest complete checkpoint of the run dir (or none); none; or a checkpoint folder."""
        if resume == "none":
            return None
        if resume == "auto":
            complete = self.complete_checkpoints()
            return complete[-1] if complete else None
        path = Path(resume)
        newest = newest_checkpoint(path)  # a run dir: its newest checkpoint
        if newest is not None:
            return newest
        if not (path / COMPLETE).is_file():
            raise UserError(
                f"--resume {resume}: no complete checkpoint there (a folder such as runs/NAME/checkpoints/"
                "step-000120 holding a COMPLETE file). Pass auto, none, or such a folder."
            )
        return path

    def load(self, path: Path, module: torch.nn.Module, optimizer, scheduler) -> tuple[TrainingState, dict]:
        """Restore everything saved at `path`; returns the training state and this rank's saved state."""
        try:
            saved = json.loads((path / "state.json").read_text())
            config = saved.pop("config")
            state = TrainingState(**saved)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise UserError(
                f"checkpoint {path} has no valid state.json ({error}); delete it or pass --resume none."
            ) from None
        for key in MUST_MATCH:
            if config.get(key) != getattr(self.config, key):
                raise UserError(
                    f"checkpoint {path} was written with {key}={config.get(key)!r}, this run has "
                    f"{getattr(self.config, key)!r}: use the same options, another --run-dir, or --resume none."
                )
        if self.config.schedule in ("onecycle", "cosine"):  # their shape is planned for the run's total steps
            for key in ("epochs", "max_steps", "schedule"):
                if config.get(key) != getattr(self.config, key):
                    raise UserError(
                        f"checkpoint {path} was written with {key}={config.get(key)!r}, this run has "
                        f"{getattr(self.config, key)!r}; the {self.config.schedule} schedule cannot be "
                        "stretched: keep the options, or use another --run-dir or --resume none."
                    )
        if state.world_size != self.accelerator.num_processes:
            raise UserError(
                f"checkpoint {path} was written by {state.world_size} processes, this run has "
                f"{self.accelerator.num_processes}: resume with the same number for an exact continuation."
            )
        try:
            weights = load_file(str(path / "model.safetensors"))
            module.load_state_dict(weights)
        except (SafetensorError, OSError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise UserError(
                f"cannot load the weights in {path}/model.safetensors ({first_line}); "
                "delete that checkpoint or pass --resume none."
            ) from None
        training = load_data(path / "training.pt")
        rank_state = load_data(path / f"rank-{self.accelerator.process_index}.pt")
        # load_state_dict takes the saved groups' flags too; keep this run's kernels (fused or not).
        kernels = [
            {key: group[key] for key in ("fused", "foreach") if key in group} for group in optimizer.param_groups
        ]
        try:
            optimizer.load_state_dict(training["optimizer"])
            for group, keep in zip(optimizer.param_groups, kernels):
                group.update(keep)
            scheduler.load_state_dict(training["scheduler"])
            if self.accelerator.scaler is not None and training["scaler"]:
                self.accelerator.scaler.load_state_dict(training["scaler"])
            set_rng_states(rank_state.pop("rng"))
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise UserError(
                f"checkpoint {path} holds unexpected training state ({type(error).__name__}: {error}); "
                "delete that checkpoint or pass --resume none."
            ) from None
        return state, rank_state
