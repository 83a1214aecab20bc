"""A trained model, loaded for use: the one place that turns a weights file or a run folder into the
model, the config it was trained with, its dataset's facts, its preprocessing and its class names.
evaluate.py's report, `--predict`, `--export` and `from mnist_dist import load_model` all start here.

    model, preprocess = load_model("runs/<name>")          # or a .safetensors file, or a checkpoint folder
    probabilities = model(preprocess(Image.open("7.png"))).softmax(dim=1)  # prepare="auto": see Preprocess

`path` may name a run directory (`runs/<name>`, whose `model.safetensors` is used, or else its newest
complete `checkpoints/step-*/model.safetensors`), a checkpoint folder, or a `.safetensors` file. The
weights file carries what the model needs (checkpoint/weights.py): the whole training config, the
input shape, the class names and the training set's mean and std, so `preprocess` prepares images
exactly as training did. Older files without a config use a `config.yaml` beside the file or in a
folder above it. Every problem a user can fix is a one-line CheckpointError.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from mnist_dist.checkpoint.layout import nearest, newest_checkpoint
from mnist_dist.cli import read_yaml_mapping
from mnist_dist.config import FIELDS, Config, make_config
from mnist_dist.data.datasets import INFO
from mnist_dist.data.images import DatasetInfo, Normalizer
from mnist_dist.data.user_images import check_prepare, pixels
from mnist_dist.errors import UserError, first_line
from mnist_dist.models import build_model

WEIGHTS_FILE = "model.safetensors"


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, or does not match the model or dataset asked for."""


@dataclass
class Preprocess:
    """PIL image(s) or uint8 pixels (C, H, W) or (N, C, H, W) -> the float32 batch (N, C, H, W) the model takes.

    A PIL image is made into the training set's format first, as `prepare` says (data/user_images.py):
    "auto" takes an image already in that format (28x28 grayscale, light ink on black) as it is and
    prepares any other like a photo (white ink centred on black, 28x28); "none" and "photo" choose one
    of the two always. Pixels are taken as they are.
    """

    info: DatasetInfo  # input shape, mean and std, class names
    prepare: str = "auto"  # one of config.PREPARATIONS, for PIL images

    def __post_init__(self):
        check_prepare(self.prepare)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """uint8 (C, H, W): the image in the training set's format, what the exported program takes."""
        return pixels(image, self.info, self.prepare)

    def __call__(self, images) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            images = torch.stack([self.pixels(image) for image in images])
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise UserError("preprocess takes PIL images or uint8 pixels (C, H, W) or (N, C, H, W)")
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        expected = (self.info.channels, self.info.height, self.info.width)
        if batch.dim() != 4 or tuple(batch.shape[1:]) != expected:
            raise UserError(f"the model takes images of {expected} (C, H, W), got {tuple(images.shape)}")
        return Normalizer(self.info, batch.device)(batch)


@dataclass(frozen=True)
class TrainedModel:
    model: torch.nn.Module  # on the CPU in eval mode, every saved tensor loaded strictly
    config: Config  # the resolved config the weights were trained with
    info: DatasetInfo  # what it was trained on: input shape, class names, mean and std
    weights_path: Path  # the .safetensors file the weights came from
    trained_commit: str = ""  # the git commit of the code that trained them ("" when the file does not say)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.info)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def metrics_log(self) -> Path | None:
        """The training run's metrics.jsonl, for the learning curves (None for a lone weights file)."""
        return nearest(self.weights_path, "metrics.jsonl")

    def check_fits(self, dataset: str) -> DatasetInfo:
        """The info of `dataset`, or a CheckpointError when its images or classes do not fit the model."""
        wanted = INFO[dataset]
        if shape(self.info) != shape(wanted):
            raise CheckpointError(
                f"the {self.config.model} in {self.weights_path} was trained on {self.info.name} "
                f"({shape(self.info)}) and cannot classify {dataset} ({shape(wanted)}); "
                f"pass --dataset {self.info.name} or a checkpoint trained on {dataset}"
            )
        return wanted


def shape(info: DatasetInfo) -> str:
    return f"{info.channels}x{info.height}x{info.width} images, {info.num_classes} classes"


def load_trained(path: str | Path) -> TrainedModel:
    """The trained model in `path` (a run directory, a checkpoint folder or a .safetensors file), on the CPU."""
    weights_path = find_weights(Path(path))
    state, metadata = read_weights(weights_path)
    config = read_config(weights_path, metadata)
    info = dataset_info(config, metadata, weights_path)
    model = restore_model(config, info, state, weights_path)
    return TrainedModel(model, config, info, weights_path, metadata.get("git_commit", ""))


def load_model(
    path: str | Path, device: str | torch.device = "cpu", prepare: str = "auto"
) -> tuple[torch.nn.Module, Preprocess]:
    """The model in `path` (a run directory, a checkpoint folder or a .safetensors file), on `device`
    in eval mode, and the `preprocess` that turns images into its input (`prepare`: how it treats a PIL
    image, "auto", "none" or "photo", as evaluate.py --prepare). Bad input: a UserError."""
    trained = load_trained(path)
    return trained.model.to(device), Preprocess(trained.info, prepare)


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


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file and its metadata (checkpoint/weights.py lists the keys)."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            return {name: file.get_tensor(name) for name in file.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({first_line(error)}); "
            "train again or pass an intact model.safetensors"
        ) from None


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


def dataset_info(config: Config, metadata: dict[str, str], weights_path: Path) -> DatasetInfo:
    """The dataset the model was trained on: its input shape, classes and normalization, as the weights
    file says (older files say only the dataset's name: then as data/datasets.py says)."""
    info = INFO[config.dataset]
    if "mean" not in metadata:
        return info
    try:
        mean, std, names = (tuple(json.loads(metadata[key])) for key in ("mean", "std", "class_names"))
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(f"{weights_path} holds damaged metadata; train again") from None
    return replace(info, mean=mean, std=std, class_names=names)


def restore_model(
    config: Config, info: DatasetInfo, state: dict[str, torch.Tensor], weights_path: Path
) -> torch.nn.Module:
    """The architecture named in the config, with the saved weights loaded strictly (every tensor must fit)."""
    model = build_model(config.model, info, config.eval_flip)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights in {weights_path} are not a {config.model} for "
            f"{config.dataset}: {state_mismatch(model.state_dict(), state, error)}; they belong to another "
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
