"""Each model's recipe: the optimizer, learning rate, batch size and schedule it learns well with, applied
whenever that model is chosen. Precedence: defaults < the model's recipe < `--config` file < flags.

The classic recipes are those of the tutorials this project grew from: LeNet with plain SGD and
momentum at batch 100; the MLPs and the linear model with Adam at batch 64 (the CIFAR-10 MLP with
Adam 1e-4 at batch 16); the cnn with the fast recipe of train.py's defaults (SGD, onecycle, label
smoothing). No torch import: `--help` and config errors answer at once.
"""

from typing import Any

# A plain optimizer, no schedule and no regularization: what the classic tutorials use.
PLAIN = {"weight_decay": 0.0, "schedule": "none", "label_smoothing": 0.0}
ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, **PLAIN}

RECIPES: dict[str, dict[str, Any]] = {
    "cnn": {
        "optimizer": "sgd",
        "lr": 0.2,  # peak of the onecycle schedule
        "batch_size": 256,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "label_smoothing": 0.1,
    },
    "lenet": {"optimizer": "sgd", "lr": 0.05, "batch_size": 100, "momentum": 0.9, "nesterov": False, **PLAIN},
    "linear": ADAM,
    "mlp": ADAM,
    "mlp-sigmoid": ADAM,
    "mlp-wide": ADAM,
    "cifar-mlp": {**ADAM, "lr": 1e-4, "batch_size": 16},
}


def recipe(model: str) -> dict[str, Any]:
    """The options `model`'s recipe sets (none for a name that is not a model: Config says so)."""
    return dict(RECIPES.get(model, {}))
