"""Loading a trained run: find the weights, recover the config they were trained with, rebuild the model.

`--checkpoint` may name a run directory (`runs/<name>`, whose `model.safetensors` is used, or
else its newest complete `checkpoints/step-*/model.safetensors`), a checkpoint folder, or a
`.safetensors` file. The config comes from the file's metadata (train.py writes it there) or from
a `config.yaml` beside the file or in a folder above it. Every problem a user can fix is a
one-line UserError.
"""

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mnist_dist.checkpoint.layout import nearest, newest_checkpoint
from mnist_dist.cli import read_yaml_mapping
from mnist_dist.config import FIELDS, Config, make_config
from mnist_dist.data.datasets import INFO
from mnist_dist.data.images import DatasetInfo
from mnist_dist.errors import UserError, first_line
from mnist_dist.models import build_model

WEIGHTS_FILE = "model.safetensors"


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, or does not match the model or dataset asked for."""


@dataclass
class TrainedRun:
    config: Config  # the resolved config the weights were trained with
    weights_path: Path
    state: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)  # the weights file's (weights.py)

    @property
    def info(self) -> DatasetInfo:
        """The dataset the model was trained on: its input shape, classes and normalization, as the
        weights file says (older files say only the dataset's name: then as data/datasets.py says)."""
        info = INFO[self.config.dataset]
        if "mean" not in self.metadata:
            return info
        try:
            mean, std, names = (tuple(json.loads(self.metadata[key])) for key in ("mean", "std", "class_names"))
        except (KeyError, ValueError, TypeError):
            raise CheckpointError(f"{self.weights_path} holds damaged metadata; train again") from None
        return replace(info, mean=mean, std=std, class_names=names)

    @property
    def metrics_log(self) -> Path | None:
        """The training run's metrics.jsonl, for the learning curves (None for a lone weights file)."""
        return nearest(self.weights_path, "metrics.jsonl")


def load_run(checkpoint: str) -> TrainedRun:
    path = find_weights(Path(checkpoint))
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({first_line(error)}); "
            "train again or pass an intact model.safetensors"
        ) from None
    return TrainedRun(read_config(path, metadata), path, state, metadata)


def find_weights(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a run directory (runs/<name>) or a .safetensors file"
        )
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    saved = newest_checkpoint(path)  # a run stopped before its final save
    if saved is not None:
        return saved / WEIGHTS_FILE
    raise CheckpointError(f"{path} holds no {WEIGHTS_FILE}; pass a finished run directory or a .safetensors file")


def read_config(weights_path: Path, metadata: dict[str, str]) -> Config:
    """The training config: from the weights' metadata, else the nearest config.yaml above them."""
    if "config" in metadata:
        try:
            values = json.loads(metadata["config"])
        except json.JSONDecodeError:
            raise CheckpointError(f"{weights_path} holds a damaged config in its metadata; train again") from None
        source = f"the metadata of {weights_path}"
    else:
        found = nearest(weights_path, "config.yaml")
        if found is None:
            raise CheckpointError(
                f"{weights_path} carries no config and there is no config.yaml beside it; "
                "put the run's config.yaml next to the weights"
            )
        values, source = read_yaml_mapping(found, error=CheckpointError, fix="restore it from the run"), str(found)
        if not values:  # train.py writes every option, so an empty file is a damaged one, not "all defaults"
            raise CheckpointError(f"{found} is not a config (a mapping of option: value); restore it from the run")
    # Options added after the run was trained take their defaults; options since removed are ignored.
    known = {key: value for key, value in values.items() if key in FIELDS}
    try:
        return make_config(known)
    except UserError as error:
        raise CheckpointError(f"the config in {source} is not valid: {error}") from None


def shape(info: DatasetInfo) -> str:
    return f"{info.channels}x{info.height}x{info.width} images, {info.num_classes} classes"


def check_dataset_fits(run: TrainedRun, dataset: str) -> DatasetInfo:
    """The info of `dataset`, or a CheckpointError when its images or classes do not fit the model."""
    trained, wanted = run.info, INFO[dataset]
    if shape(trained) != shape(wanted):
        raise CheckpointError(
            f"the {run.config.model} in {run.weights_path} was trained on {trained.name} "
            f"({shape(trained)}) and cannot classify {dataset} ({shape(wanted)}); "
            f"pass --dataset {trained.name} or a checkpoint trained on {dataset}"
        )
    return wanted


def build_trained_model(run: TrainedRun) -> torch.nn.Module:
    """The architecture named in the config, with the saved weights loaded strictly (every tensor must fit)."""
    model = build_model(run.config.model, run.info, run.config.eval_flip)
    try:
        model.load_state_dict(run.state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights in {run.weights_path} are not a {run.config.model} for "
            f"{run.config.dataset}: {state_mismatch(model.state_dict(), run.state, error)}; they belong to another "
            "architecture or dataset, so pass the config.yaml they were trained with"
        ) from None
    return model.eval()


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], error: RuntimeError) -> str:
    """The first way `found` differs from the model's `expected` state: a missing, extra or resized tensor."""
    missing = sorted(set(expected) - set(found))
    if missing:
        return f"{len(missing)} missing tensors (e.g. {missing[0]})"
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        return f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})"
    resized = sorted(name for name in set(expected) & set(found) if expected[name].shape != found[name].shape)
    if resized:
        name = resized[0]
        return f"tensor {name} is {tuple(found[name].shape)}, expected {tuple(expected[name].shape)}"
    return first_line(error)  # none of these: say what torch said
