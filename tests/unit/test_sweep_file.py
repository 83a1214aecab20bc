"""Sweep files expanded into points (mnist_dist/sweep/spec.py): grid order, random draws that depend on
the index alone, run_cap, and one clear error (exit 2) for each kind of bad sweep file."""

import itertools
import json
import math
import subprocess
import sys
import time

import pytest
from helpers import REPO

from mnist_dist.config import make_config
from mnist_dist.sweep.spec import SweepError, read_sweep, train_flags

RANDOM = """
name: rnd
method: random
run_cap: 20
parameters:
  lr: {distribution: log_uniform_values, min: 0.001, max: 0.5}
  batch-size: {min: 16, max: 64}
  momentum: {min: 0.0, max: 0.95}
  model: {values: [linear, lenet]}
  augment: {values: [true, false]}
"""


def write(tmp_path, text: str, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_grid_is_itertools_product_order_and_run_cap_cuts_it():
    sweep = read_sweep(REPO / "launch/wandb/grid.yaml")
    product = list(itertools.product([0.01, 0.03, 0.1], ["linear", "lenet"]))
    assert sweep.size == 6 and sweep.method == "grid" and sweep.metric_key == "val_accuracy"
    assert [(sweep.point(i)["lr"], sweep.point(i)["model"]) for i in range(6)] == product
    assert train_flags(sweep.point(3)) == ["--lr", "0.03", "--model", "lenet", "--dataset", "digits", "--epochs", "2"]


def test_grid_run_cap_limits_the_points(tmp_path):
    sweep = read_sweep(write(tmp_path, "method: grid\nrun_cap: 2\nparameters:\n  lr: {values: [0.1, 0.2, 0.3]}\n"))
    assert sweep.size == 2 and sweep.name == "sweep"  # no name: the file's stem
    with pytest.raises(SweepError, match="task 2 is outside sweep sweep, which has 2 points: submit with --array=0-1"):
        sweep.point(2)


def test_random_points_depend_on_the_index_alone_and_stay_in_range(tmp_path):
    sweep = read_sweep(write(tmp_path, RANDOM))
    points = [sweep.point(i) for i in range(sweep.size)]
    assert sweep.size == 20
    assert points == [read_sweep(write(tmp_path, RANDOM, "again.yaml")).point(i) for i in range(20)]
    assert sweep.point(7) == points[7] and len({p["lr"] for p in points}) == 20
    for point in points:
        assert 0.001 <= point["lr"] <= 0.5 and 16 <= point["batch-size"] <= 64 and 0 <= point["momentum"] <= 0.95
        assert isinstance(point["batch-size"], int)  # whole min and max: int_uniform, as W&B does
        make_config(point)  # train.py accepts every point
    logs = [math.log(p["lr"]) for p in points]  # log-uniform: both decades below 0.05 are reached
    assert min(logs) < math.log(0.01) and max(logs) > math.log(0.05)
    assert train_flags({"augment": False, "lr": 0.1}) == ["--no-augment", "--lr", "0.1"]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "method: grid\nparameters: {lr: {values: [0.1]}}\nruncap: 3\n",
            "unknown key 'runcap'. Did you mean 'run_cap'?",
        ),
        ("method: bayes\nparameters: {lr: {values: [0.1]}}\n", "method 'bayes' needs a W&B server"),
        ("method: random\nparameters: {lr: {values: [0.1]}}\n", "method random needs run_cap"),
        (
            "method: grid\nparameters: {learning-rate: {values: [0.1]}}\n",
            "parameter learning-rate: not a train.py option",
        ),
        ("method: grid\nparameters: {lr: {values: [0.1, -1]}}\n", "parameter lr: lr must be greater than 0, got -1"),
        ("method: grid\nparameters: {model: {values: [vgg]}}\n", "unknown model 'vgg'"),
        ("method: grid\nparameters: {lr: {min: 0.1, max: 1}}\n", "a grid needs values: [...]"),
        ("method: grid\nparameters: {lr: {valus: [0.1]}}\n", "unknown key 'valus'. Did you mean 'values'?"),
        (
            "method: random\nrun_cap: 2\nparameters: {lr: {min: 0, max: 1, distribution: log_uniform_values}}\n",
            "log_uniform_values needs min > 0",
        ),
        (
            "method: random\nrun_cap: 2\nparameters: {lr: {min: 0.1, max: 1, distribution: normal}}\n",
            "unknown distribution 'normal'",
        ),
        ("method: random\nrun_cap: 0\nparameters: {lr: {values: [0.1]}}\n", "run_cap must be a whole number"),
        ("method: grid\nparameters: {}\n", "no parameters"),
        ("method: [grid\n", "is not valid YAML"),
        (
            "method: grid\nmetric: {name: val/accuracy, goal: maximise}\nparameters: {lr: {values: [0.1]}}\n",
            "metric: unknown goal 'maximise'. Did you mean 'maximize'? Use goal: maximize or goal: minimize.",
        ),
        (
            "method: grid\nmetric: val/accuracy\nparameters: {lr: {values: [0.1]}}\n",
            "metric: a str, not a mapping: write metric: {name: val/accuracy, goal: maximize} (or minimize).",
        ),
        (
            "method: grid\nmetric: {name: val/loss}\nparameters: {lr: {values: [0.1]}}\n",
            "metric: no goal (W&B would minimize val/loss): add goal: maximize or goal: minimize.",
        ),
        (
            "method: grid\nmetric: {nmae: val/loss, goal: minimize}\nparameters: {lr: {values: [0.1]}}\n",
            "metric: unknown key 'nmae'. Did you mean 'name'? Use name, goal, target.",
        ),
        ("method: grid\nmetric: {goal: maximize}\nparameters: {lr: {values: [0.1]}}\n", "metric: no name: write"),
    ],
)
def test_bad_sweep_files_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(SweepError) as error:
        read_sweep(write(tmp_path, text))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_metric_goal_says_which_end_is_best(tmp_path):
    text = "method: grid\nmetric: {name: val/loss, goal: minimize}\nparameters: {lr: {values: [0.1]}}\n"
    sweep = read_sweep(write(tmp_path, text))
    assert (sweep.metric, sweep.metric_key, sweep.maximize) == ("val/loss", "val_loss", False)
    default = read_sweep(write(tmp_path, "method: grid\nparameters: {lr: {values: [0.1]}}\n", "plain.yaml"))
    assert (default.metric, default.maximize) == ("val/accuracy", True)


def test_the_command_line_prints_size_and_points_and_ends_bad_input_in_one_line(tmp_path):
    def sweep(*args):
        command = [sys.executable, "-m", "mnist_dist.sweep", *map(str, args)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)

    assert sweep("size", "launch/wandb/grid.yaml").stdout == "6\n"
    assert sweep("args", "launch/wandb/grid.yaml", 1).stdout.split("\n")[:4] == ["--lr", "0.01", "--model", "lenet"]
    for args, message in (
        (("args", "launch/wandb/grid.yaml", 6), "error: task 6 is outside sweep grid, which has 6 points"),
        (("size", tmp_path / "none.yaml"), "does not exist"),
        (("summarize", tmp_path), "has no sweep.yaml: pass a sweep folder"),
    ):
        result = sweep(*args)
        assert result.returncode == 2 and result.stderr.count("error: ") == 1 and message in result.stderr
        assert "Traceback" not in result.stderr


def test_summarize_reads_each_runs_status_metric_and_parameters_from_its_folder(tmp_path):
    from mnist_dist.sweep.plot import plot
    from mnist_dist.sweep.status import read_sweep_folder

    write(tmp_path, "name: s\nmethod: grid\nparameters:\n  lr: {values: [0.1, 0.2, 0.3, 0.4]}\n")
    for task, lr in enumerate((0.1, 0.2, 0.3, 0.4)):
        (tmp_path / str(task)).mkdir()
        (tmp_path / str(task) / "config.yaml").write_text(f"lr: {lr}\n")
    (tmp_path / "0" / "summary.json").write_text('{"val_accuracy": 0.5, "seconds": 12.0}')
    (tmp_path / "1" / "metrics.jsonl").write_text('{"val_accuracy": 0.7}\n{"val_accuracy": 0.6}\n')
    (tmp_path / "1" / ".lock").write_text(json.dumps({"heartbeat": time.time()}))
    (tmp_path / "2" / "checkpoints" / "step-000040").mkdir(parents=True)
    (tmp_path / "2" / "checkpoints" / "step-000040" / "COMPLETE").write_text("")
    sweep, rows = read_sweep_folder(tmp_path)
    assert [(r["task"], r["status"], r["metric"]) for r in rows] == [
        ("1", "running", 0.7),  # the best epoch so far
        ("0", "finished", 0.5),
        ("2", "stopped", None),
        ("3", "failed", None),
    ]
    assert rows[0]["parameters"] == {"lr": 0.2} and rows[1]["loop_seconds"] == 12.0
    assert plot(sweep, rows, tmp_path / "sweep.png").stat().st_size > 0
