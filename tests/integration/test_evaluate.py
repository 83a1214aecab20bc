"""evaluate.py on a model trained here: exact 1 vs 2 process reports, the figures, prediction, bad input."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, assert_clean_error, error_lines, run_script, summary, train_into
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

from mnist_dist import load_model
from mnist_dist.checkpoint.layout import newest_checkpoint
from mnist_dist.checkpoint.weights import cpu_weights, model_metadata, weights_bytes
from mnist_dist.config import make_config
from mnist_dist.data.datasets import INFO
from mnist_dist.data.user_images import mnist_field
from mnist_dist.evaluate.figures import DPI, SIZES
from mnist_dist.models import build_model

# Imported from its file: a package named `evaluate` (Hugging Face's) may be installed too.
_spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "evaluate.py")
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)

INK, PAPER = (25, 25, 35), (236, 232, 224)  # dark ink on slightly warm paper, like a photo of a drawing


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """One LeNet trained for one epoch on digits (about 99%), shared by every test in this module."""
    run_dir = tmp_path_factory.mktemp("evaluate") / "lenet-digits"
    train_into(run_dir, data_dir, "--config", "configs/lenet.yaml", "--dataset", "digits", "--epochs", "1")
    return run_dir


@pytest.fixture(scope="module")
def one_process(run_dir):
    """evaluate.py alone, with the default output folder runs/<name>/eval/."""
    result = run_script("evaluate.py", ["--checkpoint", run_dir])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result, run_dir / "eval"


def main(*args) -> int:
    return evaluate_script.main([str(arg) for arg in args])


def test_report_agrees_with_training_and_prints_every_table(one_process, run_dir):
    result, out = one_process
    metrics = json.loads((out / "metrics.json").read_text())
    trained = summary(run_dir)
    assert metrics["samples"] == 5000 and metrics["accuracy"] >= 0.95
    # The trainer's test of the kept weights saw the same model and batches (a 5000-image split: 1e-3 is 5 images,
    # room for kernels that round differently in the training process).
    assert metrics["accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-3)
    assert metrics["loss"] == pytest.approx(trained["test_loss"], rel=1e-3)
    assert sum(map(sum, metrics["confusion_matrix"])) == 5000
    assert [row["name"] for row in metrics["per_class"]] == [str(digit) for digit in range(10)]
    for title in ("accuracy", "per class", "confusion matrix", "most confused", "report written to"):
        assert title in result.stdout


def test_metrics_json_and_report_md_name_the_commits_that_trained_and_evaluated(one_process, run_dir):
    out = one_process[1]
    metrics = json.loads((out / "metrics.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert metrics["git_commit"] == head and isinstance(metrics["git_dirty"], bool)
    assert metrics["trained_git_commit"] == summary(run_dir)["git_commit"] == head
    assert f"Trained at commit `{head}`; evaluated at commit `{head}`" in (out / "report.md").read_text()


def test_two_processes_write_exactly_the_numbers_of_one(one_process, run_dir, tmp_path):
    result = run_script("evaluate.py", ["--checkpoint", run_dir, "--out", tmp_path], processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("per class") == 1  # only the main process reports
    single = json.loads((one_process[1] / "metrics.json").read_text())
    assert json.loads((tmp_path / "metrics.json").read_text()) == single  # every float to the last digit


def test_every_figure_is_a_small_non_blank_png_of_its_size(one_process):
    out = one_process[1]
    for name, (width, height) in SIZES.items():
        path = out / name
        assert path.stat().st_size < 200_000, name
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (width * DPI, height * DPI), name
            counts = np.bincount(np.asarray(image.convert("L")).ravel(), minlength=256)
        assert counts.max() < 0.97 * counts.sum(), f"{name} is (nearly) one colour"
    markdown = (out / "report.md").read_text()
    assert all(f"]({name})" in markdown for name in SIZES)
    assert "## Config" in markdown and "| model | `lenet` |" in markdown


def draw(path, mode: str, strokes) -> None:
    """A digit a person might draw: thick dark strokes, off-centre on a 200x150 light canvas."""
    background = {"RGB": PAPER, "L": PAPER[0], "RGBA": (0, 0, 0, 0)}[mode]  # RGBA: ink on transparency
    ink = {"RGB": INK, "L": INK[0], "RGBA": (*INK, 255)}[mode]
    image = Image.new(mode, (200, 150), background)
    pen = ImageDraw.Draw(image)
    for kind, points in strokes:
        if kind == "line":
            pen.line(points, fill=ink, width=12, joint="curve")
        else:
            pen.ellipse(points, outline=ink, width=12)
    image.save(path)


DRAWINGS = {  # file: (true digit, image mode, strokes)
    "seven.png": ("7", "RGB", [("line", [(30, 25), (95, 25), (60, 130)])]),
    "one.jpg": ("1", "L", [("line", [(140, 20), (138, 130)])]),
    "zero.png": ("0", "RGBA", [("ellipse", [(110, 30), (165, 135)])]),
}


def test_predict_reads_drawn_digits_like_the_training_images(run_dir, tmp_path, capsys):
    for name, (_, mode, strokes) in DRAWINGS.items():
        draw(tmp_path / name, mode, strokes)
    assert main("--checkpoint", run_dir, "--predict", tmp_path, "--json") == 0
    results = {Path(row["file"]).name: row["predictions"] for row in json.loads(capsys.readouterr().out)}
    assert set(results) == set(DRAWINGS)
    for name, (digit, _, _) in DRAWINGS.items():
        assert len(results[name]) == 3
        assert results[name][0]["class"] == digit, (name, results[name])


def test_drawings_are_prepared_the_way_mnist_was(tmp_path):
    draw(tmp_path / "seven.png", "RGB", DRAWINGS["seven.png"][2])
    field = mnist_field(Image.open(tmp_path / "seven.png")).astype(float)
    assert field.shape == (28, 28)
    assert field[0].max() == field[-1].max() == 0  # light ink on black, with a margin
    rows, columns = np.nonzero(field > 0.2 * 255)
    assert max(np.ptp(rows), np.ptp(columns)) + 1 <= 20  # the ink's box scaled into 20x20
    mass_y, mass_x = (np.indices(field.shape) * field).reshape(2, -1).sum(axis=1) / field.sum()
    assert abs(mass_y - 13.5) <= 1 and abs(mass_x - 13.5) <= 1  # centred by centre of mass
    negative = Image.fromarray(255 - np.asarray(Image.open(tmp_path / "seven.png").convert("L")))
    assert np.abs(mnist_field(negative).astype(float) - field).max() <= 2  # light on dark: the same field


def test_an_unreadable_image_is_reported_and_the_others_still_classified(run_dir, tmp_path, capsys):
    draw(tmp_path / "seven.png", "RGB", DRAWINGS["seven.png"][2])
    (tmp_path / "notes.png").write_text("not an image")
    assert main("--checkpoint", run_dir, "--predict", tmp_path / "notes.png", tmp_path / "seven.png") == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [line for line in captured.err.splitlines() if line.strip()]
    assert len(error_lines(captured.err)) == 1 and "notes.png" in captured.err
    assert "seven.png: 7 " in captured.out


def test_a_huge_image_is_one_error_and_the_others_still_classified(run_dir, tmp_path, capsys, monkeypatch):
    draw(tmp_path / "seven.png", "RGB", DRAWINGS["seven.png"][2])
    Image.new("L", (300, 300)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # PIL refuses images over twice this: 300 x 300 is
    assert main("--checkpoint", run_dir, "--predict", tmp_path / "huge.png", tmp_path / "seven.png") == 2
    captured = capsys.readouterr()
    huge = f"error: {tmp_path / 'huge.png'}: too large to classify (over 40,000 pixels); pass a smaller image"
    assert error_lines(captured.err) == [huge]
    assert "seven.png: 7 " in captured.out


def test_a_missing_checkpoint_is_one_line_through_the_real_entry_point(tmp_path):
    result = run_script("evaluate.py", ["--checkpoint", tmp_path / "nothing-here"])
    assert_clean_error(result, "does not exist", "nothing-here")


def copy_config(run_dir, folder):
    """The run's config.yaml in a new folder, plus an option from a newer version (which must be ignored)."""
    folder.mkdir()
    (folder / "config.yaml").write_text((run_dir / "config.yaml").read_text() + "option_from_a_newer_version: 1\n")
    return folder


def bad_weights(kind: str, run_dir, folder):
    """A run folder with the lenet-on-digits config.yaml but weights that are not those of that model."""
    if kind == "corrupt":
        (folder / "model.safetensors").write_bytes(b"\x00garbage" * 40)
        return "not a readable safetensors file"
    model = build_model("mlp", INFO["digits"]) if kind == "architecture" else build_model("lenet", INFO["cifar10"])
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, folder / "model.safetensors")
    return "are not a lenet for digits"


@pytest.mark.parametrize("kind", ["corrupt", "architecture", "dataset"])
def test_weights_that_do_not_fit_are_one_clear_line(kind, run_dir, tmp_path, capsys):
    folder = copy_config(run_dir, tmp_path / kind)
    expected = bad_weights(kind, run_dir, folder)
    assert main("--checkpoint", folder, "--out", tmp_path / "out") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and expected in lines[0] and str(folder) in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_dataset_the_model_cannot_read_is_refused_before_loading(run_dir, tmp_path, capsys):
    assert main("--checkpoint", run_dir, "--dataset", "cifar10", "--data-dir", tmp_path / "empty") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "cannot classify cifar10" in lines[0] and "3x32x32" in lines[0]
    assert not (tmp_path / "empty").exists()  # refused before any download was tried


# Four paths from an image file to a class: evaluate.py --predict, load_model's preprocess and model, the
# exported program, and the arithmetic of docs/EVALUATION.md's plain safetensors snippet. A linear model
# whose weights look at two regions (built here, no training) tells an image taken as it is from one
# cropped and centred: ink in the top-left 12x12 says 7, ink in the central 12x12 says 2.
TOP_LEFT, CENTRE = (slice(0, 12), slice(0, 12)), (slice(8, 20), slice(8, 20))


def two_region_weights(path) -> Path:
    """A linear model on digits (weights file with its metadata) that answers 7 or 2 by where the ink is."""
    weight = torch.zeros(10, 28, 28)
    weight[7][TOP_LEFT], weight[2][CENTRE] = 1.0, 1.0
    bias = torch.full((10,), -1000.0)  # every other class loses
    bias[7] = bias[2] = 0.0
    config = make_config({"model": "linear", "dataset": "digits"})
    weights = {"1.weight": weight.view(10, 784), "1.bias": bias}
    path.write_bytes(weights_bytes(weights, model_metadata(config, INFO["digits"], step=1)))
    return path


def plain_snippet_class(weights_path, image_path) -> int:
    """docs/EVALUATION.md's plain PyTorch lines: the file's weights and metadata, the image's own pixels."""
    with safe_open(str(weights_path), framework="pt") as file:
        about = file.metadata()
        weights = {name: file.get_tensor(name) for name in file.keys()}
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    model.load_state_dict(weights)
    pixels = torch.from_numpy(np.array(Image.open(image_path).convert("L"))).float()
    mean, std = json.loads(about["mean"])[0], json.loads(about["std"])[0]
    with torch.no_grad():
        return model(((pixels / 255 - mean) / std).view(1, 1, 28, 28)).argmax().item()


def predicted_classes(weights_path, image_path, program_input, capsys) -> list[int]:
    """The class each of the four paths gives; the exported program and the snippet read `program_input`."""
    assert main("--checkpoint", weights_path, "--predict", image_path, "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    model, preprocess = load_model(weights_path)
    program = torch.export.load(weights_path.parent / "model.pt2").module()
    pixels = torch.from_numpy(np.array(Image.open(program_input).convert("L"))).view(1, 1, 28, 28)
    with torch.no_grad():
        loaded = model(preprocess(Image.open(image_path))).argmax().item()
        exported = program(pixels).argmax().item()
    return [int(row["predictions"][0]["class"]), loaded, exported, plain_snippet_class(weights_path, program_input)]


def test_every_path_classifies_an_image_in_the_datasets_format_as_it_is(tmp_path, capsys):
    weights_path = two_region_weights(tmp_path / "model.safetensors")
    assert main("--checkpoint", weights_path, "--export", tmp_path / "model.pt2") == 0
    assert "in the dataset's format, as they are" in capsys.readouterr().out  # the export says what it takes
    field = np.zeros((28, 28), dtype=np.uint8)
    field[2:8, 2:8] = 255  # white ink on black in the top-left corner, 28x28 grayscale: MNIST's format
    Image.fromarray(field).save(tmp_path / "as-dataset.png")
    assert predicted_classes(weights_path, tmp_path / "as-dataset.png", tmp_path / "as-dataset.png", capsys) == [7] * 4
    # A photo-like image (dark ink on light paper, off-centre, another size) is prepared as a photo: its ink is
    # cropped and centred. The exported program and the snippet take its prepared pixels (preprocess.pixels).
    canvas = Image.new("L", (200, 150), 230)
    ImageDraw.Draw(canvas).rectangle([20, 15, 60, 55], fill=20)
    canvas.save(tmp_path / "photo.png")
    prepared = load_model(weights_path)[1].pixels(Image.open(tmp_path / "photo.png"))
    Image.fromarray(prepared[0].numpy()).save(tmp_path / "photo-prepared.png")
    assert predicted_classes(weights_path, tmp_path / "photo.png", tmp_path / "photo-prepared.png", capsys) == [2] * 4
    # The one documented option: --prepare photo crops and centres even an image in the dataset's format.
    assert main("--checkpoint", weights_path, "--predict", tmp_path / "as-dataset.png", "--prepare", "photo") == 0
    assert "as-dataset.png: 2 " in capsys.readouterr().out
    assert load_model(weights_path, prepare="photo")[1](Image.open(tmp_path / "as-dataset.png")).shape == (1, 1, 28, 28)


def test_prepare_none_refuses_an_image_of_another_size_in_one_line(tmp_path, capsys):
    weights_path = two_region_weights(tmp_path / "model.safetensors")
    Image.new("L", (200, 150), 230).save(tmp_path / "photo.png")
    assert main("--checkpoint", weights_path, "--predict", tmp_path / "photo.png", "--prepare", "none") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(tmp_path / "photo.png") in line and "200x150, not 28x28" in line and "--prepare photo" in line


def test_a_fifo_or_a_device_is_one_error_and_the_next_image_still_classified(tmp_path):
    weights_path = two_region_weights(tmp_path / "model.safetensors")
    os.mkfifo(tmp_path / "pipe.png")  # open() of a FIFO waits for a writer: none comes
    field = np.zeros((28, 28), dtype=np.uint8)
    field[2:8, 2:8] = 255  # ink in the top-left corner: 7
    Image.fromarray(field).save(tmp_path / "seven.png")
    images = [tmp_path / "pipe.png", "/dev/null", tmp_path / "seven.png"]
    # In a process of its own, with a timeout: a regression blocks on the FIFO for good.
    result = run_script("evaluate.py", ["--checkpoint", weights_path, "--predict", *images], timeout=60)
    assert result.returncode == 2, result.stderr
    fix = "pass image files (PNG, JPEG) or folders of them"
    assert error_lines(result.stderr) == [
        f"error: {tmp_path / 'pipe.png'}: not an image file but a FIFO (named pipe); {fix}",
        f"error: /dev/null: not an image file but a device; {fix}",
    ]
    assert f"{tmp_path / 'seven.png'}: 7 " in result.stdout


def zero_std_weights(path) -> Path:
    """Weights whose metadata says std [0]: every image would normalize to NaN."""
    two_region_weights(path)
    with safe_open(str(path), framework="pt") as file:
        metadata, weights = file.metadata(), {name: file.get_tensor(name) for name in file.keys()}
    path.write_bytes(weights_bytes(weights, {**metadata, "std": "[0]"}))
    return path


@pytest.mark.parametrize("task", ["report", "predict", "export"])
def test_metadata_that_would_give_nan_is_one_line_in_every_task(task, tmp_path, capsys):
    weights_path = zero_std_weights(tmp_path / "model.safetensors")
    Image.new("L", (28, 28)).save(tmp_path / "black.png")
    flags = {
        "report": ["--out", tmp_path / "out"],
        "predict": ["--predict", tmp_path / "black.png"],
        "export": ["--export", tmp_path / "out.pt2"],
    }[task]
    assert main("--checkpoint", weights_path, *flags) == 2
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith(f"error: {weights_path}: its metadata's std is [0]: each must be a number from 0.001")
    assert "nan" not in captured.out.lower()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt2").exists()


def test_a_run_still_training_reports_its_newest_checkpoint_in_the_runs_eval_folder(
    lenet_five_steps, data_dir, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(lenet_five_steps, run)
    for name in ("model.safetensors", "last.safetensors", "summary.json"):  # not written until the run ends
        (run / name).unlink()
    facts = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": None, "heartbeat": time.time()}
    (run / ".lock").write_text(json.dumps(facts) + "\n")  # held by this test's process: alive
    checkpoint = newest_checkpoint(run)
    result = run_script("evaluate.py", ["--checkpoint", run, "--data-dir", data_dir])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines()[0] == (
        f"note: run {run} has no final weights yet (it is still training: process {os.getpid()} on "
        f"{socket.gethostname()} holds it): using its newest checkpoint {checkpoint.name} (step 5)"
    )
    metrics = json.loads((run / "eval" / checkpoint.name / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(checkpoint / "model.safetensors") and metrics["samples"] == 5000
    assert not [path for path in (run / "checkpoints").rglob("*") if "eval" in path.name]  # nothing written there


def test_weights_of_another_model_in_a_run_are_refused_in_one_line(lenet_five_steps, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(lenet_five_steps, run)
    cnn = make_config({"model": "cnn", "dataset": "digits"})  # a cnn's weights copied into the lenet run
    weights = cpu_weights(build_model("cnn", INFO["digits"]))
    (run / "model.safetensors").write_bytes(weights_bytes(weights, model_metadata(cnn, INFO["digits"], step=1)))
    assert main("--checkpoint", run) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        f"error: {run / 'model.safetensors'} holds a cnn trained on digits (its metadata says so), but "
        f"{run / 'config.yaml'} is the config of a lenet on digits: they are not the same run's; "
        "put the run's own model.safetensors back, or evaluate the file from a folder of its own"
    )
    assert not (run / "eval").exists()
