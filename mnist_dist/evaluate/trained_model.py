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
folder above it. Every problem a user can fix is a one-line CheckpointError: a metadata field unlike
what the trainer writes (checked once, by weights.read_metadata), or weights whose own config names
another model or dataset than the run's config.yaml beside them.

A run directory without final weights (still training, or stopped before its end) gives its newest
complete checkpoint, and TrainedModel.note says so: evaluate.py prints it, load_model warns.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from mnist_dist.checkpoint.layout import nearest, newest_checkpoint, step_of
from mnist_dist.checkpoint.run_lock import describe, live_holder
from mnist_dist.checkpoint.weights import CheckpointError, read_metadata
from mnist_dist.config import FIELDS, Config, make_config
from mnist_dist.data.datasets import INFO
from mnist_dist.data.images import DatasetInfo, Normalizer
from mnist_dist.data.user_images import check_prepare, pixels
from mnist_dist.errors import UserError, first_line
from mnist_dist.models import build_model
from mnist_dist.yaml_files import read_yaml_mapping

WEIGHTS_FILE = "model.safetensors"


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
    note: str = ""  # why these weights, where a run directory has no final ones ("" otherwise)

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
    weights_path, note = find_weights(Path(path))
    state, metadata = read_weights(weights_path)
    saved = read_metadata(metadata, weights_path, lambda: config_beside(weights_path))  # every field checked
    check_run_config(weights_path, saved.config)
    model = restore_model(saved.config, saved.info, state, weights_path)
    return TrainedModel(model, saved.config, saved.info, weights_path, saved.git_commit, note)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", prepare: str = "auto"
) -> tuple[torch.nn.Module, Preprocess]:
    """The model in `path` (a run directory, a checkpoint folder or a .safetensors file), on `device`
    in eval mode, and the `preprocess` that turns images into its input (`prepare`: how it treats a PIL
    image, "auto", "none" or "photo", as evaluate.py --prepare). Bad input: a UserError."""
    trained = load_trained(path)
    if trained.note:  # a run without final weights: its newest checkpoint
        warnings.warn(trained.note, stacklevel=2)
    return trained.model.to(device), Preprocess(trained.info, prepare)


def find_weights(path: Path) -> tuple[Path, str]:
    """The weights file `path` names, and why these where `path` is a run without final weights ("" otherwise)."""
    if path.is_file():
        return path, ""
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a run directory (runs/<name>) or a .safetensors file"
        )
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE, ""
    saved = newest_checkpoint(path)  # a run still training, or stopped before its final save
    holder = live_holder(path)
    why = f"it is still training: {describe(holder)} holds it" if holder else "it stopped before its end"
    if saved is not None:
        return saved / WEIGHTS_FILE, (
            f"run {path} has no final weights yet ({why}): using its newest checkpoint {saved.name} "
            f"(step {step_of(saved)})"
        )
    if holder:
        raise CheckpointError(
            f"run {path} has no weights yet ({why}, and has written no checkpoint): "
            "wait for its first checkpoint (--checkpoint-every) or its end"
        )
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


def config_beside(weights_path: Path) -> Config:
    """The config of an older weights file, which carries none: the nearest config.yaml above it."""
    found = nearest(weights_path, "config.yaml")
    if found is None:
        raise CheckpointError(
            f"{weights_path} carries no config and there is no config.yaml beside it; "
            "put the run's config.yaml next to the weights"
        )
    values = read_yaml_mapping(found, error=CheckpointError, fix="restore it from the run")
    if not values:  # train.py writes every option, so an empty file is a damaged one, not "all defaults"
        raise CheckpointError(f"{found} is not a config (a mapping of option: value); restore it from the run")
    # Options added after the run was trained take their defaults; options since removed are ignored.
    known = {key: value for key, value in values.items() if key in FIELDS}
    try:
        return make_config(known)
    except UserError as error:
        raise CheckpointError(f"the config in {found} is not valid: {error}") from None


def check_run_config(weights_path: Path, config: Config) -> None:
    """Refuse weights whose own config names another model or dataset than the run's config.yaml beside
    them (a cnn's weights copied into a lenet run), which would be reported as that run's."""
    found = nearest(weights_path, "config.yaml")
    if found is None:
        return
    try:
        run = read_yaml_mapping(found, error=CheckpointError)
    except CheckpointError:  # a damaged config.yaml: the weights carry their own config, the one used
        return
    ours = {"model": config.model, "dataset": config.dataset}
    if all(str(run.get(key, value)) == value for key, value in ours.items()):
        return
    theirs = {key: run.get(key, value) for key, value in ours.items()}
    raise CheckpointError(
        f"{weights_path} holds a {config.model} trained on {config.dataset} (its metadata says so), but "
        f"{found} is the config of a {theirs['model']} on {theirs['dataset']}: they are not the same run's; "
        f"put the run's own {weights_path.name} back, or evaluate the file from a folder of its own"
    )


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
