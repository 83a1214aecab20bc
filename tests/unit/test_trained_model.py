"""Loading a trained model (evaluate/trained_model.py) from small linear models saved here: a weights
file with its metadata, a run folder, a run stopped at a checkpoint, and the one-line errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from mnist_dist import load_model
from mnist_dist.checkpoint.layout import COMPLETE
from mnist_dist.checkpoint.weights import cpu_weights, model_metadata, weights_bytes
from mnist_dist.cli import yaml_text
from mnist_dist.config import make_config
from mnist_dist.data import user_images
from mnist_dist.data.datasets import INFO
from mnist_dist.data.user_images import in_dataset_format
from mnist_dist.errors import UserError
from mnist_dist.evaluate import command
from mnist_dist.evaluate.trained_model import CheckpointError, Preprocess, load_trained
from mnist_dist.models import build_model

CONFIG = make_config({"model": "linear", "dataset": "digits"})
# Numbers no dataset has, so a test can tell the file's metadata from data/datasets.py's defaults.
INFO_IN_FILE = replace(INFO["digits"], mean=(0.25,), std=(0.5,), class_names=tuple("abcdefghij"))


def linear_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return cpu_weights(build_model("linear", INFO["digits"]))


def save_weights(path, weights: dict[str, torch.Tensor], with_metadata: bool = True):
    """A model file as the trainer writes it (checkpoint/weights.py), or an older one with no metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = model_metadata(CONFIG, INFO_IN_FILE, step=7) if with_metadata else None
    path.write_bytes(weights_bytes(weights, metadata) if with_metadata else save(weights))
    return path


def assert_holds(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[name], weights[name]) for name in weights)


def test_a_weights_file_gives_the_model_its_config_and_the_files_preprocessing(tmp_path):
    weights = linear_weights(seed=1)
    path = save_weights(tmp_path / "a" / "b" / "c" / "model.safetensors", weights)  # no run folder within reach
    trained = load_trained(path)
    assert trained.weights_path == path and trained.metrics_log is None
    assert trained.config.model == "linear" and trained.config.dataset == "digits"
    assert trained.info == INFO_IN_FILE and trained.class_names == tuple("abcdefghij")
    assert not trained.model.training
    assert_holds(trained.model, weights)
    # The file's mean and std, not the dataset's: (0 / 255 - 0.25) / 0.5 = -0.5 for a black image.
    batch = trained.preprocess(torch.zeros(1, 28, 28, dtype=torch.uint8))
    assert batch.shape == (1, 1, 28, 28) and torch.all(batch == -0.5)


def test_load_model_returns_the_same_model_and_its_preprocess(tmp_path):
    weights = linear_weights(seed=2)
    path = save_weights(tmp_path / "model.safetensors", weights)
    model, preprocess = load_model(path)
    assert isinstance(preprocess, Preprocess) and preprocess.info == INFO_IN_FILE
    assert_holds(model, weights)


def test_a_run_folder_gives_its_final_weights_and_its_metrics_log(tmp_path):
    run = tmp_path / "runs" / "linear"
    final = linear_weights(seed=3)
    save_weights(run / "model.safetensors", final)
    save_weights(run / "checkpoints" / "step-5" / "model.safetensors", linear_weights(seed=4))
    (run / "checkpoints" / "step-5" / COMPLETE).touch()
    (run / "metrics.jsonl").write_text("")
    trained = load_trained(str(run))
    assert trained.weights_path == run / "model.safetensors"
    assert trained.metrics_log == run / "metrics.jsonl"
    assert_holds(trained.model, final)


def test_a_run_stopped_early_gives_its_newest_complete_checkpoint_and_its_config_yaml(tmp_path):
    run = tmp_path / "runs" / "linear"
    steps = {10: linear_weights(seed=10), 20: linear_weights(seed=20), 30: linear_weights(seed=30)}
    for step, weights in steps.items():  # older files: no metadata, the config in the run's config.yaml
        save_weights(run / "checkpoints" / f"step-{step}" / "model.safetensors", weights, with_metadata=False)
    for step in (10, 20):  # step 30 was still being written: no COMPLETE
        (run / "checkpoints" / f"step-{step}" / COMPLETE).touch()
    (run / "config.yaml").write_text(yaml_text(CONFIG))
    (run / "metrics.jsonl").write_text("")
    newest = load_trained(run)
    assert newest.weights_path == run / "checkpoints" / "step-20" / "model.safetensors"
    assert newest.info == INFO["digits"] and newest.config.model == "linear"
    assert_holds(newest.model, steps[20])
    folder = load_trained(run / "checkpoints" / "step-10")  # a checkpoint folder named directly
    assert folder.weights_path == run / "checkpoints" / "step-10" / "model.safetensors"
    assert folder.metrics_log == run / "metrics.jsonl"  # found two folders up
    assert_holds(folder.model, steps[10])


def one_line_error(path) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_trained(path)
    assert isinstance(caught.value, UserError)  # the entry points print it as one line, exit 2
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_missing_path_is_one_line_that_names_it(tmp_path):
    assert "does not exist" in one_line_error(tmp_path / "nothing-here")


def test_a_folder_without_weights_and_weights_without_a_config_are_one_line(tmp_path):
    assert "holds no model.safetensors" in one_line_error(tmp_path)
    lone = save_weights(tmp_path / "a" / "b" / "c" / "old.safetensors", linear_weights(seed=5), with_metadata=False)
    assert "carries no config" in one_line_error(lone)


def test_weights_of_another_architecture_are_one_line(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    path.write_bytes(weights_bytes(cpu_weights(build_model("mlp", INFO["digits"])), model_metadata(CONFIG, None, 1)))
    assert "are not a linear for digits" in one_line_error(path)


def test_a_dataset_of_another_shape_is_refused_and_one_of_the_same_accepted(tmp_path):
    trained = load_trained(save_weights(tmp_path / "model.safetensors", linear_weights(seed=6)))
    assert trained.check_fits("mnist") == INFO["mnist"]
    with pytest.raises(CheckpointError, match="cannot classify cifar10 .3x32x32"):
        trained.check_fits("cifar10")


def test_auto_takes_an_image_in_the_datasets_format_as_it_is_and_prepares_any_other(tmp_path):
    preprocess = load_model(save_weights(tmp_path / "model.safetensors", linear_weights(seed=7)))[1]
    field = np.zeros((28, 28), dtype=np.uint8)
    field[1:6, 1:6] = 255  # light ink on black in a corner, 28x28 grayscale: digits' format
    assert torch.equal(preprocess.pixels(Image.fromarray(field))[0], torch.from_numpy(field))
    assert not torch.equal(Preprocess(INFO_IN_FILE, "photo").pixels(Image.fromarray(field))[0], torch.from_numpy(field))
    for other in (Image.fromarray(255 - field), Image.fromarray(field).convert("RGB"), Image.new("L", (30, 28))):
        assert not in_dataset_format(other, INFO["digits"])  # dark on light, RGB, another size: photos
    with pytest.raises(UserError, match="prepare must be one of auto, none, photo"):
        load_model(tmp_path / "model.safetensors", prepare="crop")


def test_evaluate_offers_the_preparations_of_user_images():
    assert command.PREPARATIONS is user_images.PREPARATIONS  # one tuple, in config.py: command.py loads no torch
