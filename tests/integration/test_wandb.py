"""Weights & Biases, read back from what the real SDK wrote in offline mode (wandb_files.py): one run
per job, a complete run page, resume into the same run, and training that never depends on W&B."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import OFFLINE_SHORT, REPO, assert_same_weights, metrics_rows, summary, train_into

pytest.importorskip("wandb", reason="these tests read what the real wandb package writes")
from wandb_files import offline_runs  # noqa: E402

from mnist_dist.cli import build_parser  # noqa: E402
from mnist_dist.config import make_config  # noqa: E402
from mnist_dist.tracking.wandb_session import STATE_FILE, wandb_names  # noqa: E402

SHORT = ["--model", "linear", "--dataset", "digits", "--batch-size", "500"]
# digits: 18,000 training images (2,000 held out for validation); 2 processes x 500 = 18 steps per epoch,
# so 25 steps end inside the second epoch.
TWO_PROCESS = [*SHORT, "--max-steps", "25", "--epochs", "2", "--log-every", "5", "--wandb", "offline"]
TWO_PROCESS += ["--wandb-group", "smoke", "--wandb-tags", "ci,linear", "--wandb-notes", "two processes"]


@pytest.fixture(scope="module")
def two_process_job(tmp_path_factory, data_dir, wandb_env):
    run_dir = tmp_path_factory.mktemp("two-process") / "run"
    result = train_into(run_dir, data_dir, *TWO_PROCESS, processes=2, env=wandb_env)
    (run,) = offline_runs(run_dir)
    return result, run_dir, run


def staged_json(entry) -> dict:
    """A file of an artifact as staged for upload (offline runs keep it until `wandb sync`)."""
    return json.loads(open(entry.local_path).read())


def test_a_two_process_job_is_one_wandb_run_whose_id_is_kept_in_the_run_dir(two_process_job):
    result, run_dir, run = two_process_job
    assert result.stdout.count("W&B offline: wandb sync") == 1
    assert json.loads((run_dir / STATE_FILE).read_text())["run_id"] == run.id
    (checkpoint,) = [path for path in (run_dir / "checkpoints").glob("step-*") if path.name.endswith("25")]
    assert json.loads((checkpoint / "state.json").read_text())["wandb_run_id"] == run.id


def test_run_page_has_the_resolved_config_system_facts_and_names(two_process_job):
    _, run_dir, run = two_process_job
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {key: run.config[key] for key in config} == config
    system = run.config["system"]
    assert (system["device_type"], system["device_count"], system["world_size"], system["nodes"]) == ("cpu", 2, 2, 1)
    assert system["mixed_precision"] == "no"
    assert system["torch_version"] == torch.__version__
    for key in ("torchvision_version", "accelerate_version"):
        assert system[key]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert system["git_commit"] == commit
    assert (run.run.display_name, run.run.run_group, list(run.run.tags), run.run.notes, run.run.job_type) == (
        config["run_name"],
        "smoke",
        ["ci", "linear"],
        "two processes",
        "train",
    )


def test_logged_metrics_equal_metrics_jsonl_on_one_step_axis(two_process_job):
    _, run_dir, run = two_process_job
    rows = metrics_rows(run_dir)
    history = {row["_step"]: row for row in run.history}
    assert run.steps == sorted(set(run.steps))  # one row per global optimizer step, increasing
    assert [row["step"] for row in rows if row["type"] == "epoch"] == [18, 25]
    for row in rows:
        logged = wandb_names(row["type"], {key: value for key, value in row.items() if key not in ("type", "step")})
        assert {key: history[row["step"]][key] for key in logged} == logged
    final = summary(run_dir)
    assert history[25]["val/accuracy"] == final["last_val_accuracy"]
    for key in ("val_accuracy", "test_accuracy", "test_loss", "seconds"):  # val_accuracy -> val/accuracy
        assert run.summary[key.replace("val_", "val/").replace("test_", "test/")] == final[key]
    assert run.summary["samples_per_second"] > 0


def test_final_results_confusion_matrix_predictions_table_and_model_artifact(two_process_job):
    _, run_dir, run = two_process_job
    final = summary(run_dir)
    assert "confusion_matrix" in run.config["_wandb"]["visualize"]  # wandb.plot.confusion_matrix's chart
    counts = staged_json(run.artifact("run_table", "confusion_matrix").manifest.contents[0])["data"]
    assert sum(n for _, _, n in counts) == 5000  # the whole digits test set
    assert sum(n for true, predicted, n in counts if true == predicted) == round(final["test_accuracy"] * 5000)

    predictions = run.artifact("run_table", "predictions")
    files = {entry.path: entry for entry in predictions.manifest.contents}
    assert len([path for path in files if path.startswith("media/images/") and path.endswith(".png")]) == 32
    table = staged_json(files["predictions.table.json"])
    assert table["columns"] == ["index", "image", "true", "predicted", *(f"p({digit})" for digit in range(10))]
    assert len(table["data"]) == 32
    for row in table["data"]:
        assert row[1]["_type"] == "image-file" and row[1]["path"] in files
        assert row[3] == str(max(range(10), key=lambda digit: row[4 + digit]))  # predicted = most probable class
        assert sum(row[4:]) == pytest.approx(1, abs=1e-5)
    assert run.history[-1]["predictions"]["_type"] == "table-file"

    model = run.artifact("model")
    kept = f"step-{final['kept_step']}"  # the kept weights' step: the best validation accuracy's
    assert model.name == f"model-{run.id}" and set(model.aliases) == {"latest", kept}
    assert json.loads(model.metadata) == yaml.safe_load((run_dir / "config.yaml").read_text())
    (entry,) = model.manifest.contents
    assert entry.path == "model.safetensors" and entry.size == (run_dir / "model.safetensors").stat().st_size


def test_resumed_job_continues_the_same_run_and_its_steps_never_go_back(tmp_path, data_dir, wandb_env):
    run_dir = tmp_path / "run"
    args = [*SHORT, "--wandb", "offline", "--log-every", "1", "--checkpoint-every", "2", "--no-checkpoint-epochs"]
    args += ["--schedule", "none"]
    train_into(run_dir, data_dir, *args, "--max-steps", "4", env=wandb_env)
    # A crash after step 4 was logged but before its checkpoint was complete: the job restarts from step 2.
    shutil.rmtree(run_dir / "checkpoints" / "step-000004")
    result = train_into(run_dir, data_dir, *args, "--max-steps", "6", env=wandb_env)
    assert "(step 2, epoch 1)" in result.stdout
    first, second = offline_runs(run_dir)
    assert first.id == second.id
    assert first.steps == [1, 2, 3, 4]
    assert second.steps == [5, 6]  # steps 3 and 4 were trained again but not logged again
    assert second.history[-1]["val/accuracy"] == summary(run_dir)["last_val_accuracy"]
    assert json.loads((run_dir / STATE_FILE).read_text()) == {
        "run_id": first.id,
        "project": "mnist-dist",
        "entity": "",
        "last_step": 6,
    }


@pytest.fixture(scope="module")
def without_wandb(tmp_path_factory, data_dir, wandb_env):
    run_dir = tmp_path_factory.mktemp("disabled") / "run"
    train_into(run_dir, data_dir, *SHORT, "--max-steps", "6", "--wandb", "disabled", env=wandb_env)
    return run_dir


def test_online_without_an_api_key_warns_once_then_logs_offline_with_identical_training(
    tmp_path, data_dir, wandb_env, without_wandb
):
    run_dir = tmp_path / "run"
    result = train_into(run_dir, data_dir, *SHORT, "--max-steps", "6", "--wandb", "online", env=wandb_env)
    assert result.stdout.count("W&B online failed (UsageError: No API key configured") == 1
    assert "logging offline instead: wandb sync" in result.stdout
    (run,) = offline_runs(run_dir)
    assert run.history[-1]["val/accuracy"] == summary(run_dir)["last_val_accuracy"]
    assert_same_weights(run_dir, without_wandb)


FAILING_WANDB = """
import os

class Settings:
    def __init__(self, **settings):
        pass

class Run:
    id, project, entity, url, dir, disabled, starting_step = "fake1234", "p", "", "", "/tmp/files", False, 0
    calls = 0

    def log(self, row, step=None):
        Run.calls += 1
        if Run.calls == 3:
            raise ConnectionError("simulated: server error 500")

    def finish(self, exit_code=0):
        pass

def init(**arguments):
    if os.environ["FAKE_WANDB_FAILS"] == "init":
        raise RuntimeError("simulated: bad API key")
    return Run()

def teardown():
    pass
"""


@pytest.mark.parametrize(
    "fails, message",
    [
        ("init", "W&B disabled: wandb.init failed (RuntimeError: simulated: bad API key)."),
        (
            "log",
            "W&B disabled: logging failed (ConnectionError: simulated: server error 500); training goes on without it.",
        ),
    ],
    ids=["init", "log"],
)
def test_failing_wandb_warns_once_and_training_ends_as_without_it(
    fails, message, tmp_path, data_dir, wandb_env, without_wandb
):
    fake = tmp_path / "fake" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAILING_WANDB)
    env = {**wandb_env, "PYTHONPATH": f"{fake.parent}:{REPO}", "FAKE_WANDB_FAILS": fails}
    run_dir = tmp_path / "run"
    result = train_into(run_dir, data_dir, *SHORT, "--max-steps", "6", "--wandb", "online", "--log-every", "1", env=env)
    assert result.stdout.count("W&B disabled") == 1 and message in result.stdout
    assert_same_weights(run_dir, without_wandb)


EVALUATION = """
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from mnist_dist.evaluate.trained_model import load_trained
from mnist_dist.evaluate.report import build_metrics
from mnist_dist.tracking.wandb_media import log_evaluation

run_dir, into = Path(sys.argv[1]), sys.argv[2]
run = load_trained(run_dir)
labels = torch.arange(40) % 10
probabilities = torch.nn.functional.one_hot((labels + (torch.arange(40) % 4 == 0)) % 10, 10).float()
predicted = probabilities.argmax(dim=1)
predictions = SimpleNamespace(labels=labels, predicted=predicted, probabilities=probabilities, loss=0.5)
predictions.count, predictions.correct = 40, int((predictions.predicted == labels).sum())
predictions.accuracy = predictions.correct / 40
about = {"checkpoint": str(run.weights_path), "model": "linear", "trained_on": "digits"}
about.update(dataset="digits", split="test")
metrics = build_metrics(predictions, run.info.class_names, about)
out_dir = run_dir / "eval"
out_dir.mkdir(exist_ok=True)
Image.new("RGB", (8, 8)).save(out_dir / "curves.png")
images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
figures = [out_dir / "curves.png"]
log_evaluation(run.config, run.weights_path, metrics, predictions, images, figures, out_dir, into=into, mode="offline")
"""


def test_evaluation_logs_into_the_training_run_or_a_new_eval_run(two_process_job, tmp_path, wandb_env):
    _, trained_dir, training = two_process_job
    run_dir = tmp_path / "run"
    shutil.copytree(trained_dir, run_dir)
    env = {**wandb_env, "PYTHONPATH": str(REPO)}
    for into in ("train", "new"):
        command = [sys.executable, "-c", EVALUATION, str(run_dir), into]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
    runs = offline_runs(run_dir)
    assert len(runs) == 3
    (into_training,) = [run for run in runs[1:] if run.id == training.id]
    (new,) = [run for run in runs if run.id != training.id]
    assert into_training.id == training.id and into_training.steps == [26]  # after the training's last step
    row = into_training.history[0]
    assert row["evaluate/digits-test/accuracy"] == 0.75
    assert row["evaluate/digits-test/predictions"]["_type"] == "table-file"
    assert row["evaluate/digits-test/figures/curves"]["_type"] == "image-file"
    assert "evaluate/digits-test/confusion_matrix" in into_training.config["_wandb"]["visualize"]
    assert json.loads((run_dir / STATE_FILE).read_text())["last_step"] == 26
    assert new.id != training.id and new.run.job_type == "eval" and new.config["training_run_id"] == training.id
    assert new.history[0]["evaluate/digits-test/accuracy"] == 0.75


def test_every_sweep_parameter_is_a_train_option_with_valid_values():
    sweep = yaml.safe_load((REPO / "launch/wandb/sweep.yaml").read_text())
    assert sweep["program"] == "train.py" and "${args}" in sweep["command"]  # the agent passes --name=value
    assert sweep["method"] == "bayes"
    assert {"lr", "batch-size", "model", "optimizer"} <= set(sweep["parameters"])
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    for name, spec in sweep["parameters"].items():
        assert f"--{name}" in flags, f"sweep parameter {name} is not a train.py option"
        for value in spec.get("values", [spec.get("value", spec.get("min")), spec.get("max")]):
            if value is not None:
                make_config({name: value})  # raises ConfigError for a value train.py would refuse
    epoch_row = {"epoch": 1, "val_accuracy": 0.9, "val_loss": 0.3}
    assert sweep["metric"]["name"] in wandb_names("epoch", epoch_row)  # the metric is one the runs log


def test_wandbs_own_console_output_only_with_verbose(offline_short_run, tmp_path, data_dir, wandb_env):
    """By default one line of ours says where the run is; --verbose brings back wandb's banner and summary."""
    quiet, _ = offline_short_run
    verbose = train_into(tmp_path / "verbose", data_dir, *OFFLINE_SHORT, "--verbose", env=wandb_env)

    def wandb_lines(result) -> list[str]:
        return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("wandb:")]

    assert wandb_lines(quiet) == [] and quiet.stdout.count("W&B offline: wandb sync") == 1
    assert len(wandb_lines(verbose)) >= 3, verbose.stdout + verbose.stderr
