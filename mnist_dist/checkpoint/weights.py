"""The model file: safetensors weights whose metadata says how to use them without this project.

Metadata (every value a string; JSON where it is a list or a mapping):

    format        "mnist-dist/1"
    model         the model's name in mnist_dist/models.py (lenet, cnn, mlp, ...)
    dataset       what it was trained on
    input_shape   [channels, height, width] of one image, e.g. [1, 28, 28]
    class_names   the class of each output logit, in order
    mean, std     per channel, on the 0..1 pixel scale: the model sees (pixels / 255 - mean) / std
    step          the optimizer step of these weights
    accuracies    the final files only: {"val": ..., "test": ...} reached by these weights
    git_commit    the code that trained them ("" outside a git checkout)
    config        the whole resolved training config (JSON)
"""

import json

import torch
from safetensors.torch import save

from mnist_dist.config import Config
from mnist_dist.data.images import DatasetInfo

FORMAT = "mnist-dist/1"


def cpu_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `module`'s weights and buffers on the CPU, which later steps do not change."""
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in module.state_dict().items()}


def model_metadata(config: Config, info: DatasetInfo | None, step: int, **extra) -> dict[str, str]:
    """The metadata above; `info` None (a checkpointer without it) leaves out the dataset's facts."""
    metadata = {"format": FORMAT, "model": config.model, "dataset": config.dataset, "step": str(step)}
    if info is not None:
        metadata |= {
            "input_shape": json.dumps([info.channels, info.height, info.width]),
            "class_names": json.dumps(list(info.class_names)),
            "mean": json.dumps(list(info.mean)),
            "std": json.dumps(list(info.std)),
        }
    extra = {key: value if isinstance(value, str) else json.dumps(value) for key, value in extra.items()}
    return {**metadata, **extra, "config": json.dumps(config.to_dict())}


def weights_bytes(weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file in memory (atomic.py writes it: a full disk then says so in plain words)."""
    return save({name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}, metadata=metadata)
