"""Which weights a run keeps: those of its best validation accuracy, chosen on the held-out validation
split (never on the test split, which reports the kept weights once, at the end), among the epochs
evaluated (all, or every --val-every and the last). Early stopping watches the same number. Without a
validation split (--val-size 0) the run keeps its last weights.
"""

import torch

from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.checkpoint.weights import cpu_weights


class ModelSelection:
    def __init__(self, state: TrainingState, patience: int, on_validation: bool, best: dict | None = None):
        """`state` holds the best accuracy and step (checkpoints carry them); `best`: the best weights
        so far, from the checkpoint resumed (every rank keeps a copy: all evaluate the kept weights)."""
        self.state = state
        self.patience = patience
        self.on_validation = on_validation
        self.best_weights = best

    def after_evaluation(self, accuracy: float, module: torch.nn.Module) -> None:
        """The validation `accuracy` of `module`'s current weights at the end of `state.epoch` (0-based).
        Early stopping's patience counts epochs: those since the previous evaluation (--val-every)."""
        state = self.state
        epochs, state.evaluated_epochs = state.epoch + 1 - state.evaluated_epochs, state.epoch + 1
        if not self.on_validation:
            return
        if accuracy > state.best_accuracy:
            state.best_accuracy, state.best_step, state.epochs_since_best = accuracy, state.step, 0
            self.best_weights = cpu_weights(module)
        else:
            state.epochs_since_best += epochs

    def stopped_early(self) -> bool:
        return bool(self.patience) and self.state.epochs_since_best >= self.patience

    def keep(self, module: torch.nn.Module) -> int:
        """Put the kept weights into `module` (the best, unless they are the last); return their step."""
        if self.best_weights is None or self.state.best_step == self.state.step:
            return self.state.step
        module.load_state_dict(self.best_weights)
        return self.state.best_step
