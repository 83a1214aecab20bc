"""The summary of a sweep's runs (mnist_dist/sweep/status.py, plot.py, `summarize`), on small sweep
folders made here (no training): only the parameters that vary get columns and panels, a log axis for
the learning rate and for numbers spanning decades, points coloured by the categorical parameter, the
seconds column says what it measures, and --json names the PNG or says why there is none."""

import io
import json

from matplotlib.colors import to_hex
from rich.console import Console

from mnist_dist.sweep.command import main
from mnist_dist.sweep.plot import draw, log_axis, why_no_plot
from mnist_dist.sweep.status import LOOP_SECONDS, read_sweep_folder, show_table

GRID = """name: g
method: grid
parameters:
  lr: {values: [0.01, 0.03, 0.1]}
  model: {values: [linear, lenet]}
  batch-size: {values: [16, 256]}
  dataset: {value: digits}
"""


def make_sweep(folder, points, metrics):
    """A sweep folder as sweep.sbatch leaves it: sweep.yaml, and per task config.yaml (and summary.json
    where `metrics` has a value for it)."""
    (folder / "sweep.yaml").write_text(GRID)
    for task, (point, metric) in enumerate(zip(points, metrics)):
        (folder / str(task)).mkdir()
        (folder / str(task) / "config.yaml").write_text(
            "".join(f"{k.replace('-', '_')}: {v}\n" for k, v in point.items())
        )
        if metric is not None:
            (folder / str(task) / "summary.json").write_text(json.dumps({"val_accuracy": metric, "seconds": 2.5}))
    return folder


def point(lr, model, batch_size=16):
    return {"lr": lr, "model": model, "batch-size": batch_size, "dataset": "digits"}


def three_runs(tmp_path):
    points = [point(0.01, "linear"), point(0.03, "lenet"), point(0.1, "lenet")]
    return make_sweep(tmp_path, points, [0.5, 0.9, 0.7])


def table_text(folder) -> str:
    console = Console(file=io.StringIO(), width=200)
    show_table(*read_sweep_folder(folder), console)
    return console.file.getvalue()


def test_the_table_has_columns_for_the_parameters_that_vary_and_names_the_others_once(tmp_path):
    text = table_text(three_runs(tmp_path))
    header = next(line for line in text.splitlines() if "task" in line)
    assert "lr" in header and "model" in header
    assert "batch-size" not in header and "dataset" not in header
    assert "same in every run: batch-size 16, dataset digits" in text
    assert text.count("digits") == 1


def test_the_seconds_column_says_what_its_seconds_measure(tmp_path):
    folder = three_runs(tmp_path)
    text = table_text(folder)
    assert "loop s" in next(line for line in text.splitlines() if "task" in line)
    assert LOOP_SECONDS in text and "training loop" in LOOP_SECONDS
    assert [row["loop_seconds"] for row in read_sweep_folder(folder)[1]] == [2.5, 2.5, 2.5]


def test_only_the_parameters_that_vary_get_panels_and_the_learning_rate_a_log_axis(tmp_path):
    figure = draw(*read_sweep_folder(three_runs(tmp_path)))
    panels = {axes.get_xlabel(): axes for axes in figure.axes}
    assert sorted(panels) == ["lr", "model"]
    assert panels["lr"].get_xscale() == "log"  # 0.01 to 0.1: one decade, still a learning rate


def test_a_positive_number_spanning_more_than_a_decade_gets_a_log_axis(tmp_path):
    assert log_axis("batch-size", {}, [16, 256]) and not log_axis("batch-size", {}, [16, 128])
    assert not log_axis("momentum", {}, [0.0, 0.9])  # zero: no log axis
    assert log_axis("lr", {}, [0.02, 0.05]) and not log_axis("lr", {}, [0.0, 0.1])
    points = [point(0.1, "lenet", 16), point(0.1, "lenet", 256)]
    figure = draw(*read_sweep_folder(make_sweep(tmp_path, points, [0.6, 0.8])))
    assert [(axes.get_xlabel(), axes.get_xscale()) for axes in figure.axes] == [("batch-size", "log")]


def test_points_are_coloured_by_the_categorical_parameter_with_a_legend(tmp_path):
    figure = draw(*read_sweep_folder(three_runs(tmp_path)))
    lr_panel = next(axes for axes in figure.axes if axes.get_xlabel() == "lr")
    colours = [to_hex(colour) for colour in lr_panel.collections[0].get_facecolors()]
    # Rows best first: 0.03 lenet (0.9), 0.1 lenet (0.7), 0.01 linear (0.5); linear is listed first.
    assert colours == [to_hex("C1"), to_hex("C1"), to_hex("C0")]
    (legend,) = figure.legends
    assert legend.get_title().get_text() == "model"
    assert [text.get_text() for text in legend.get_texts()] == ["linear", "lenet"]


def summarize_json(folder, capsys) -> dict:
    assert main(["summarize", str(folder), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_names_the_plot_it_drew(tmp_path, capsys):
    report = summarize_json(three_runs(tmp_path), capsys)
    assert report["plot"] == str(tmp_path / "sweep.png") and report["no_plot"] is None
    assert (tmp_path / "sweep.png").stat().st_size > 0
    assert [run["task"] for run in report["runs"]] == ["1", "2", "0"]


def test_json_and_the_table_say_why_no_plot_was_drawn(tmp_path, capsys):
    folder = make_sweep(tmp_path, [point(0.01, "linear"), point(0.03, "lenet")], [None, None])
    report = summarize_json(folder, capsys)
    assert report["plot"] is None and report["no_plot"] == "no run has val/accuracy yet"
    assert not (tmp_path / "sweep.png").exists()
    assert main(["summarize", str(folder)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("no plot: no run has val/accuracy yet")


def test_no_plot_when_every_run_has_the_same_parameters(tmp_path):
    sweep, rows = read_sweep_folder(make_sweep(tmp_path, [point(0.01, "linear")], [0.5]))
    assert why_no_plot(sweep, rows) == "every run has the same parameters"


# A file of a run folder each, as train.py never writes it: (task's files, its status, words of its problem).
DAMAGED = {
    "2": ({"config.yaml": "lr: [0.1\n"}, "damaged: config.yaml", "is not valid YAML (line 2, column 1)"),
    "3": ({"config.yaml": "- 0.1\n"}, "damaged: config.yaml", "must be a mapping of option: value, got list"),
    "4": (
        {"config.yaml": "lr: &a [*a]\n"},
        "damaged: config.yaml",
        "has an alias inside its own value (*a, line 1): write the value out.",
    ),
    "5": ({"summary.json": '{"val_accuracy": 0.8, "seco'}, "damaged: summary.json", "cannot be read as JSON"),
    "6": ({"summary.json": "[0.8, 2.5]"}, "damaged: summary.json", "holds a JSON list, not an object"),
    "7": ({"summary.json": '{"val_accuracy": "high"}'}, "damaged: summary.json", "val_accuracy is a str, not a number"),
    "8": ({"summary.json": '{"val_accuracy": 0.8, "seconds": [1]}'}, "damaged: summary.json", "seconds is a list"),
    "9": ({"metrics.jsonl": '{"val_accuracy": 0.6}\n[0.9]\n'}, "damaged: metrics.jsonl", "holds a JSON list as a line"),
    "10": ({"metrics.jsonl": '{"val_accuracy": "0.9"}\n'}, "damaged: metrics.jsonl", "val_accuracy is a str"),
}


def damaged_sweep(folder):
    """Two good runs (tasks 0 and 1) and one damaged run per kind in DAMAGED."""
    make_sweep(folder, [point(0.01, "linear"), point(0.03, "lenet")], [0.5, 0.9])
    for task, (files, _, _) in DAMAGED.items():
        (folder / task).mkdir()
        (folder / task / "config.yaml").write_text("lr: 0.1\nmodel: lenet\nbatch_size: 16\ndataset: digits\n")
        for name, text in files.items():
            (folder / task / name).write_text(text)
    return folder


def test_summarize_marks_each_damaged_run_and_ranks_the_others(tmp_path, capsys):
    report = summarize_json(damaged_sweep(tmp_path), capsys)
    runs = {run["task"]: run for run in report["runs"]}
    assert [run["task"] for run in report["runs"]] == ["1", "0", *DAMAGED]  # best first, then the damaged in task order
    assert runs["1"]["status"] == "finished" and runs["1"]["problem"] is None
    for task, (_, status, words) in DAMAGED.items():
        run = runs[task]
        assert run["status"] == status and run["metric"] is None, run
        assert words in run["problem"] and "\n" not in run["problem"], run["problem"]
        redo = f"delete {tmp_path / task} and run task {task} again to redo the run."
        assert run["problem"].endswith(redo) or "write the value out" in run["problem"], run  # the alias's own fix
    assert runs["2"]["parameters"] == {} and runs["5"]["parameters"]["lr"] == 0.1  # only a damaged config hides them
    assert report["plot"] == str(tmp_path / "sweep.png") and (tmp_path / "sweep.png").stat().st_size > 0
    assert main(["summarize", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "damaged: config.yaml" in table and "damaged: metrics.jsonl" in table
    assert f"task 5 is damaged: {runs['5']['problem']}" in table.splitlines()


def test_summarize_shows_a_runs_values_as_written_even_where_they_look_like_markup_or_a_date(tmp_path, capsys):
    folder = three_runs(tmp_path)
    (folder / "0" / "config.yaml").write_text("lr: 2020-01-01\nmodel: '[/oops]'\nbatch_size: 16\ndataset: digits\n")
    assert main(["summarize", str(folder)]) == 0
    assert "[/oops]" in capsys.readouterr().out
    assert [run["parameters"]["lr"] for run in summarize_json(folder, capsys)["runs"]][-1] == "2020-01-01"


def test_summarize_ranks_the_lowest_first_for_goal_minimize(tmp_path, capsys):
    folder = make_sweep(tmp_path, [point(0.01, "linear"), point(0.03, "lenet"), point(0.1, "lenet")], [None] * 3)
    (folder / "sweep.yaml").write_text(GRID + "metric: {name: val/loss, goal: minimize}\n")
    for task, loss in enumerate((0.4, 0.2, float("nan"))):
        (folder / str(task) / "summary.json").write_text(json.dumps({"val_loss": loss, "seconds": 1.0}))
    assert [run["task"] for run in summarize_json(folder, capsys)["runs"]] == ["1", "0", "2"]  # NaN last


def test_summarize_ignores_a_copy_beside_the_checkpoints(tmp_path, capsys):
    folder = three_runs(tmp_path)
    for task, names in (("1", ("step-000280", "step-000280-copy")), ("2", ("step-000280-copy",))):
        (folder / task / "summary.json").unlink()
        for name in names:
            (folder / task / "checkpoints" / name).mkdir(parents=True)
            (folder / task / "checkpoints" / name / "COMPLETE").write_text("")
    runs = {run["task"]: run["status"] for run in summarize_json(folder, capsys)["runs"]}
    assert runs == {"0": "finished", "1": "stopped", "2": "failed"}  # a copy alone is no checkpoint to resume
