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

Reading a file back (`read_metadata`, which every load of a trained model calls) checks every field
it carries against what this module writes and against the model: a file edited by hand or written
by another program is refused in one line naming the file and the field, never turned into NaN
scores or a traceback.
"""

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from mnist_dist.config import FIELDS, Config, make_config
from mnist_dist.data.datasets import INFO
from mnist_dist.data.images import DatasetInfo
from mnist_dist.errors import UserError, first_line

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


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, or does not match the model or dataset asked for."""


# Bounds far above what model_metadata writes (a config is about 2 KB of flat JSON; a class name a word
# or two): a value past them was not written here, and is refused before it is parsed or quoted.
MAX_JSON_CHARS = 65_536
MAX_TEXT_CHARS = 4096  # a string option of the config: a path at most (PATH_MAX on Linux)
MAX_NAME_CHARS = 100  # a class name (Fashion-MNIST's longest, "T-shirt/top", has 11)
MAX_INT = 2**63  # no option of a trained run holds a whole number beyond int64
# A std is the pixels' spread on the 0..1 scale, so at most 0.5; below MIN_STD the normalized pixels
# (pixel / (255 * std)) of a real image leave any range a model was trained on.
MIN_STD, MAX_STD = 0.001, 1.0
COMMIT = re.compile(r"[0-9a-f]{0,64}")  # git's SHA-1 (40) or SHA-256 (64) in hex; "" outside a git checkout
STEP = re.compile(r"[0-9]{1,18}")
DATASET_FACTS = ("input_shape", "class_names", "mean", "std")  # written together, or (info None) none of them
FIX = "the file was edited or not written by mnist-dist: restore the run's own file or train again"


@dataclass(frozen=True)
class SavedModel:
    """What a weights file's metadata says, checked: how to rebuild its model and prepare its input."""

    config: Config  # the resolved config the weights were trained with
    info: DatasetInfo  # the training set's input shape, class names, mean and std
    git_commit: str  # the code that trained them ("" when the file does not say)


def read_metadata(metadata: dict[str, str], path: Path, config_beside: Callable[[], Config]) -> SavedModel:
    """The metadata of the weights file `path`, every field checked (the module's docstring lists them).

    The config is the file's own, or for an older file without one `config_beside()` (its run's
    config.yaml). The dataset's facts must fit that config's model: a mean and a std per input
    channel, finite, std above 0; a class name per output. Anything else is one CheckpointError that
    names the file, the field and the fix.
    """
    fields = Fields(metadata, path)
    fields.check_format()
    config = fields.config() if "config" in metadata else config_beside()
    fields.check_names(config)
    fields.check_extras()
    return SavedModel(config, fields.dataset_info(config), metadata.get("git_commit", ""))


class Fields:
    """One file's metadata, read field by field; `bad` is the one-line error about a field."""

    def __init__(self, metadata: dict[str, str], path: Path):
        self.raw, self.path = metadata, path

    def bad(self, field: str, problem: str, fix: str = FIX) -> CheckpointError:
        return CheckpointError(f"{self.path}: its metadata's {field} {problem}; {fix}")

    def json(self, field: str) -> Any:
        text = self.raw[field]
        if len(text) > MAX_JSON_CHARS:
            raise self.bad(field, f"is {len(text):,} characters long, more than mnist-dist writes ({MAX_JSON_CHARS:,})")
        try:
            return json.loads(text)
        except RecursionError:  # lists nested thousands deep: json's parser recurses once per level
            raise self.bad(field, "nests lists or mappings too deep to read") from None
        except ValueError:  # not JSON, or a whole number of over 4,300 digits
            raise self.bad(field, f"is not JSON: {shown(text)}") from None

    def check_format(self) -> None:
        if "format" in self.raw and self.raw["format"] != FORMAT:
            fix = "a newer mnist-dist or another program wrote it: update mnist-dist, or train again"
            raise self.bad("format", f"is {shown(self.raw['format'])}, not {FORMAT!r}", fix)

    def config(self) -> Config:
        """The file's own config: a mapping of option: value that names the model and dataset at least."""
        values = self.json("config")
        if not isinstance(values, dict):
            raise self.bad("config", f"is {shown(values)}, not a mapping of option: value")
        for key in ("model", "dataset"):  # they decide the architecture: a default must not stand in
            if key not in values:
                raise self.bad("config", f"names no {key}")
        # Options added after the run was trained take their defaults; options since removed are ignored.
        known = {key: value for key, value in values.items() if key in FIELDS}
        for key, value in known.items():
            if not plain(value):
                raise self.bad("config", f"sets {key} to {shown(value)}, not one number, string or true/false")
        try:
            return make_config(known)
        except UserError as error:
            raise self.bad("config", f"is not valid: {cut(first_line(error).rstrip('.'), 200)}") from None

    def check_names(self, config: Config) -> None:
        """The `model` and `dataset` fields, where the file has them, say what its config says."""
        for field, value in (("model", config.model), ("dataset", config.dataset)):
            if field in self.raw and self.raw[field] != value:
                raise self.bad(field, f"says {shown(self.raw[field])} but its config says {value!r}")

    def check_extras(self) -> None:
        """The fields that no load needs but a report or a reader of the file shows: step, git_commit, accuracies."""
        if "step" in self.raw and not STEP.fullmatch(self.raw["step"]):
            raise self.bad("step", f"is {shown(self.raw['step'])}, not a step (a whole number from 0)")
        if "git_commit" in self.raw and not COMMIT.fullmatch(self.raw["git_commit"]):
            raise self.bad("git_commit", f"is {shown(self.raw['git_commit'])}, not a git commit (hexadecimal)")
        if "accuracies" in self.raw:
            reached = self.json("accuracies")
            if not isinstance(reached, dict) or not all(value is None or fraction(value) for value in reached.values()):
                raise self.bad("accuracies", f"is {shown(reached)}, not a mapping of split: accuracy (0 to 1)")

    def dataset_info(self, config: Config) -> DatasetInfo:
        """The training set's facts for the model of `config`: the file's own (an older file has none:
        then data/datasets.py's)."""
        info = INFO[config.dataset]
        if not any(key in self.raw for key in DATASET_FACTS):
            return info
        model = f"a {config.model} for {config.dataset}"
        names = self.listed("class_names", info.num_classes, f"the {info.num_classes} outputs of {model}", class_name)
        channels = f"the {info.channels} input channel(s) of {model}"
        mean = self.listed("mean", info.channels, channels, fraction)
        std = self.listed("std", info.channels, channels, lambda value: number(value) and MIN_STD <= value <= MAX_STD)
        shape = [info.channels, info.height, info.width]
        if "input_shape" in self.raw:
            found = self.json("input_shape")
            if found != shape or not all(type(size) is int for size in found):  # True == 1 in Python
                raise self.bad("input_shape", f"is {shown(found)}, but {model} takes {shape} (C, H, W)")
        return replace(info, mean=tuple(map(float, mean)), std=tuple(map(float, std)), class_names=tuple(names))

    def listed(self, field: str, count: int, what: str, valid: Callable[[Any], bool]) -> list:
        """The list in `field`: `count` values (`what` says of what), each one `valid` (RULES says how)."""
        if field not in self.raw:
            raise self.bad(field, "is missing, though the file has the dataset's other facts")
        values = self.json(field)
        if not isinstance(values, list):
            raise self.bad(field, f"is {shown(values)}, not a list")
        if len(values) != count:
            raise self.bad(field, f"has {len(values)} values for {what}")
        if not all(valid(value) for value in values):
            raise self.bad(field, f"is {shown(values)}: {RULES[field]}")
        return values


RULES = {
    "class_names": f"each must be a name of 1 to {MAX_NAME_CHARS} printable characters",
    "mean": "each must be a number from 0 to 1 (pixels are on the 0..1 scale)",
    "std": f"each must be a number from {MIN_STD} to {MAX_STD} (the pixels' spread on the 0..1 scale; 0 divides by 0)",
}


def number(value: Any) -> bool:
    """A finite JSON number (not true or false, which Python counts as 1 and 0)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_INT < value < MAX_INT  # math.isfinite of a huge int would overflow
    return isinstance(value, float) and math.isfinite(value)


def fraction(value: Any) -> bool:
    return number(value) and 0 <= value <= 1


def class_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS and value.isprintable()


def plain(value: Any) -> bool:
    """A value of one option as train.py writes it: true or false, a number, or a string of a path's length."""
    if isinstance(value, str):
        return len(value) <= MAX_TEXT_CHARS
    # A float that is not finite passes: the config's own check then names the option (lr must be finite).
    return isinstance(value, (bool, float)) or (isinstance(value, int) and -MAX_INT < value < MAX_INT)


def cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any) -> str:
    """`value` as JSON, cut short: an error line quotes what it found, never a page of it."""
    try:
        return cut(json.dumps(value))
    except (RecursionError, ValueError):  # nested as deep as the parser allows
        return "a deeply nested value"
