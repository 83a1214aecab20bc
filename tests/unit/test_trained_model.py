"""Loading a trained model (evaluate/trained_model.py) from small linear models saved here: a weights
file with its metadata, a run folder, a run stopped at a checkpoint, and the one-line errors."""

import json
import os
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

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


def stopped_run(run, steps: dict[int, dict[str, torch.Tensor]], complete=(10, 20)):
    """A run folder with a checkpoint of each of `steps` (older files: no metadata, the config in the
    run's config.yaml), those of `complete` complete, and no final weights."""
    for step, weights in steps.items():
        save_weights(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors", weights, with_metadata=False)
    for step in complete:
        (run / "checkpoints" / f"step-{step:06d}" / COMPLETE).touch()
    (run / "config.yaml").write_text(yaml_text(CONFIG))
    (run / "metrics.jsonl").write_text("")
    return run


def test_a_run_stopped_early_gives_its_newest_complete_checkpoint_and_its_config_yaml(tmp_path):
    steps = {10: linear_weights(seed=10), 20: linear_weights(seed=20), 30: linear_weights(seed=30)}
    run = stopped_run(tmp_path / "runs" / "linear", steps)  # step 30 was still being written: no COMPLETE
    newest = load_trained(run)
    assert newest.weights_path == run / "checkpoints" / "step-000020" / "model.safetensors"
    assert newest.info == INFO["digits"] and newest.config.model == "linear"
    assert newest.note == (
        f"run {run} has no final weights yet (it stopped before its end): using its newest checkpoint "
        "step-000020 (step 20)"
    )
    assert_holds(newest.model, steps[20])
    folder = load_trained(run / "checkpoints" / "step-000010")  # a checkpoint folder named directly
    assert folder.weights_path == run / "checkpoints" / "step-000010" / "model.safetensors"
    assert folder.metrics_log == run / "metrics.jsonl"  # found two folders up
    assert folder.note == ""  # the weights asked for
    assert_holds(folder.model, steps[10])


def hold(run) -> str:
    """A run lock as a training job writes it (checkpoint/run_lock.py), held by this live process."""
    facts = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": None, "heartbeat": time.time()}
    (run / ".lock").write_text(json.dumps(facts) + "\n")
    return f"process {os.getpid()} on {socket.gethostname()}"


def test_a_run_still_training_gives_its_newest_checkpoint_and_says_so(tmp_path):
    run = stopped_run(tmp_path / "runs" / "linear", {10: linear_weights(seed=11)}, complete=(10,))
    holder = hold(run)
    note = (
        f"run {run} has no final weights yet (it is still training: {holder} holds it): using its newest "
        "checkpoint step-000010 (step 10)"
    )
    assert load_trained(run).note == note
    with pytest.warns(UserWarning) as warned:  # the python API says it too
        load_model(run)
    assert [str(warning.message) for warning in warned] == [note]
    shutil.rmtree(run / "checkpoints")  # nothing written yet
    message = one_line_error(run)
    assert "is still training" in message and "has written no checkpoint" in message and "wait for" in message


def test_a_checkpoints_report_goes_to_its_runs_eval_folder_never_into_checkpoints(tmp_path):
    run = tmp_path / "runs" / "r"
    checkpoint = run / "checkpoints" / "step-000300" / "model.safetensors"
    assert command.default_out_dir(checkpoint, "digits", "digits", "test") == run / "eval" / "step-000300"
    assert command.default_out_dir(checkpoint, "digits", "mnist", "train") == run / "eval-mnist-train" / "step-000300"
    assert command.default_out_dir(run / "model.safetensors", "digits", "digits", "val") == run / "eval-val"
    assert command.default_out_dir(tmp_path / "w.safetensors", "digits", "digits", "test") == tmp_path / "eval"


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


def test_weights_whose_config_names_another_model_than_the_runs_config_yaml_are_refused(tmp_path):
    run = tmp_path / "runs" / "linear"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml_text(CONFIG))  # a linear run; a mlp's weights copied in
    torch.manual_seed(0)
    mlp = make_config({"model": "mlp", "dataset": "digits"})
    weights = cpu_weights(build_model("mlp", INFO["digits"]))
    (run / "model.safetensors").write_bytes(weights_bytes(weights, model_metadata(mlp, INFO["digits"], 1)))
    message = one_line_error(run)
    assert f"{run / 'model.safetensors'} holds a mlp trained on digits" in message
    assert f"{run / 'config.yaml'} is the config of a linear on digits" in message and "put the run's own" in message


def test_an_image_path_that_is_a_folder_or_a_device_is_one_line_not_read(tmp_path):
    for path, kind in ((tmp_path, "a folder"), (Path("/dev/null"), "a device")):
        with pytest.raises(UserError) as caught:
            user_images.open_image(path)
        assert str(caught.value) == (
            f"{path}: not an image file but {kind}; pass image files (PNG, JPEG) or folders of them"
        )


GOOD = model_metadata(CONFIG, INFO_IN_FILE, step=7, accuracies={"val": 0.9, "test": None}, git_commit="a1" * 20)
TEN_NAMES = [str(digit) for digit in range(10)]
HOSTILE = {  # id: (field, its new value (None: removed), words of the error)
    "std 0": ("std", "[0]", "from 0.001 to 1"),
    "std negative": ("std", "[-0.3]", "from 0.001 to 1"),
    "std NaN": ("std", "[NaN]", "from 0.001 to 1"),
    "std infinite": ("std", "[1e999]", "from 0.001 to 1"),
    "std missing": ("std", None, "is missing"),
    "mean empty": ("mean", "[]", "has 0 values for the 1 input channel(s) of a linear for digits"),
    "mean null": ("mean", "[null]", "from 0 to 1"),
    "mean a string": ("mean", '"ab"', 'is "ab", not a list'),
    "mean true": ("mean", "[true]", "from 0 to 1"),
    "mean 3 channels": ("mean", "[0.1, 0.2, 0.3]", "has 3 values for the 1 input channel(s)"),
    "mean 5000 digits": ("mean", "[" + "9" * 5000 + "]", "is not JSON"),
    "3 class names": ("class_names", '["a", "b", "c"]', "has 3 values for the 10 outputs of a linear for digits"),
    "class names numbers": ("class_names", json.dumps(list(range(10))), "a name of 1 to 100 printable characters"),
    "class name with a newline": ("class_names", json.dumps(["a\nb", *TEN_NAMES[1:]]), "printable characters"),
    "config a list": ("config", "[1, 2]", "is [1, 2], not a mapping of option: value"),
    "config nested deep": ("config", "[" * 30000 + "]" * 30000, "nests lists or mappings too deep"),
    "config nested in a value": ("config", '{"model": "linear", "dataset": "digits", "lr": [[[1]]]}', "sets lr to"),
    "config huge number": ("config", json.dumps({"model": "linear", "dataset": "digits", "lr": 10**30}), "sets lr"),
    "config infinite lr": ("config", json.dumps({"model": "linear", "dataset": "digits", "lr": 1e999}), "finite"),
    "config no dataset": ("config", '{"model": "linear"}', "names no dataset"),
    "config unknown model": ("config", '{"model": "resnet", "dataset": "digits"}', "unknown model 'resnet'"),
    "config too long": ("config", " " * 70_000, "70,000 characters long"),
    "config not json": ("config", "{model: linear", "is not JSON"),
    "input shape": ("input_shape", "[3, 32, 32]", "a linear for digits takes [1, 28, 28]"),
    "model field": ("model", "mlp", "says \"mlp\" but its config says 'linear'"),
    "format": ("format", "other/9", "not 'mnist-dist/1'"),
    "step": ("step", "-1", "not a step"),
    "git commit": ("git_commit", "; rm -rf", "not a git commit"),
    "accuracies a list": ("accuracies", "[1]", "not a mapping of split: accuracy"),
    "accuracy above 1": ("accuracies", '{"val": 2}', "not a mapping of split: accuracy"),
}


@pytest.mark.parametrize("field, value, words", HOSTILE.values(), ids=HOSTILE.keys())
def test_metadata_unlike_the_trainers_is_one_line_naming_the_file_and_field(tmp_path, field, value, words):
    metadata = {key: text for key, text in GOOD.items() if key != field}
    if value is not None:
        metadata[field] = value
    path = tmp_path / "model.safetensors"
    path.write_bytes(weights_bytes(linear_weights(seed=8), metadata))
    message = one_line_error(path)
    assert message.startswith(f"{path}: its metadata's {field} ") and words in message, message
    assert len(message) < 400, message  # quotes what it found, cut short
    with pytest.raises(CheckpointError, match="its metadata's"):
        load_model(path)


def test_every_field_the_trainer_writes_passes_the_check(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(weights_bytes(linear_weights(seed=9), GOOD))
    trained = load_trained(path)
    assert trained.info == INFO_IN_FILE and trained.trained_commit == "a1" * 20 and trained.note == ""
