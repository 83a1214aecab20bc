"""Where training stands (`TrainingState`, a checkpoint's state.json) and each rank's random number
generators, which a checkpoint saves so that a resumed run draws what the uninterrupted one would."""

import random
from dataclasses import dataclass, field

import numpy as np
import torch

# The TrainingState fields that count something: a checkpoint holding a negative one is damaged.
COUNTERS = ("step", "epoch", "batches_done", "epochs_since_best", "evaluated_step", "evaluated_epochs")
# Fields that the state.json of earlier versions lacks -> their value there. Before --val-every every epoch was
# evaluated, so the last evaluation was at the end of the last whole epoch.
LATER_FIELDS = {"world_size_changes": lambda saved: [], "evaluated_epochs": lambda saved: saved["epoch"]}


@dataclass
class TrainingState:
    """Where training stands. JSON, so anyone can read it."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress (or the next to start)
    batches_done: int = 0  # batches of `epoch` already trained, on each rank
    best_accuracy: float = -1.0
    best_step: int = -1
    epochs_since_best: int = 0
    evaluated_step: int = 0  # the step of the last epoch's end (evaluation when due, epoch row, model selection)
    evaluated_epochs: int = 0  # epochs trained at the last evaluation (--val-every): early stopping counts from it
    world_size: int = 1
    wandb_run_id: str | None = None
    # Each resume on another number of processes: {"step": ..., "from": old world size, "to": new one}
    # (checkpoint/resize.py). Absent from the checkpoints of earlier versions: then empty (LATER_FIELDS).
    world_size_changes: list = field(default_factory=list)


def rng_states() -> dict:
    """This process's Python, NumPy, torch and CUDA generator states, as tensors and plain data
    (torch.load with weights_only=True reads them back)."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        # This process's device only: a resume on a node with fewer GPUs has no generator for the others.
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        cuda = states["cuda"]  # one state; checkpoints of earlier versions hold one per visible device
        torch.cuda.set_rng_state(cuda[min(torch.cuda.current_device(), len(cuda) - 1)])
