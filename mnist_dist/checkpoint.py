"""Saving and loading model weights: safetensors (no code runs on load), written atomically."""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mnist_dist.config import Config


def save_model(model: torch.nn.Module, config: Config, path: Path) -> None:
    """Write `model`'s weights with the resolved config in the file's metadata.

    Written to a temporary name in the same folder, then renamed: a crash never leaves a
    half-written file under the final name.
    """
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    temporary = path.with_name(path.name + ".tmp")
    save_file(state, str(temporary), metadata={"config": json.dumps(config.to_dict())})
    os.replace(temporary, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
