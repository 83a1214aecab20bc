"""Each model's recipe: the optimizer, learning rate, batch size and schedule it learns well with, applied
whenever that model is chosen. Precedence: defaults < the model's recipe < `--config` file < flags.

The classic recipes are those of the tutorials this project grew from: LeNet with plain SGD and
momentum (at batch 64, as pytorch/examples; see below); the MLPs and the linear model with Adam at
batch 64 (the CIFAR-10 MLP with Adam 1e-4 at batch 16); the cnns with the fast recipe of train.py's
defaults (SGD, onecycle, label smoothing). A recipe's batch size is the whole job's: on N processes
each takes 1/N of it (train/job.py, resolve). No torch import: `--help` and config errors answer at once.
"""

from typing import Any

# A plain optimizer, no schedule and no regularization: what the classic tutorials use.
PLAIN = {"weight_decay": 0.0, "schedule": "none", "label_smoothing": 0.0}
ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, **PLAIN}

# The default's fast recipe: SGD with Nesterov momentum, onecycle, label smoothing.
FAST = {
    "optimizer": "sgd",
    "lr": 0.2,  # peak of the onecycle schedule
    "batch_size": 256,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
}

RECIPES: dict[str, dict[str, Any]] = {
    "cnn": FAST,
    "cnn-wide": FAST,
    "cnn-deep": FAST,
    # SGD with momentum as in the classic LeNet recipe (configs/lenet.yaml: batch 100, lr 0.05), at
    # pytorch/examples' batch 64 and lr 0.03: one epoch of digits gave 96.4-98.0% at batch 100 (seed 0,
    # 1 and 2 processes), 97.5-98.6% at batch 64 (seeds 0-2).
    "lenet": {"optimizer": "sgd", "lr": 0.03, "batch_size": 64, "momentum": 0.9, "nesterov": False, **PLAIN},
    "linear": {**ADAM, "lr": 3e-3},  # no hidden layer: one epoch at 1e-3 gave 86%, at 3e-3 89% (digits)
    "mlp": ADAM,
    "mlp-sigmoid": {**ADAM, "lr": 5e-3},  # sigmoid units learn slower: one epoch at 1e-3 gave 92%, at 5e-3 98%
    "mlp-wide": ADAM,
    "cifar-mlp": {**ADAM, "lr": 1e-4, "batch_size": 16},
}


def recipe(model: str) -> dict[str, Any]:
    """The options `model`'s recipe sets (none for a name that is not a model: Config says so)."""
    return dict(RECIPES.get(model, {}))
