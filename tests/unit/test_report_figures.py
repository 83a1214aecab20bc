"""What the report's figures show (evaluate/figures.py) and the commits report.md names, read back from
the matplotlib figures themselves (no pixels compared)."""

import json

import pytest
import torch
from matplotlib.colors import to_hex

from mnist_dist.evaluate import figures
from mnist_dist.evaluate.exact import SplitPredictions
from mnist_dist.evaluate.report import commits_markdown

NAMES = ["zero", "one", "two"]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the functions of figures.py save, by file name, instead of PNGs."""
    saved = {}

    def keep(figure, out_dir, name):
        saved[name] = figure
        return out_dir / name

    monkeypatch.setattr(figures, "save", keep)
    return saved


def test_predictions_mark_the_true_class_of_a_mistake(drawn, tmp_path):
    labels, predicted = torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])  # the second image is a mistake
    probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    figures.predictions_with_probabilities(
        images, SplitPredictions(0.5, labels, predicted, probabilities), NAMES, tmp_path
    )
    bar_axes = [axes for axes in drawn["predictions.png"].axes if axes.patches]
    colours = [[to_hex(bar.get_facecolor()) for bar in axes.patches] for axes in bar_axes]
    green, red = figures.CORRECT.lower(), figures.WRONG.lower()
    assert colours[0][0] == green  # right: the predicted class is the true one
    assert colours[1][1] == green and colours[1][2] == red  # wrong: the truth green, the prediction red
    assert [label.get_text() for label in bar_axes[1].get_yticklabels()] == ["zero", "one (true)", "two"]
    assert [label.get_text() for label in bar_axes[0].get_yticklabels()] == NAMES  # no mark without a mistake


def test_curves_show_the_learning_rate_of_the_logged_steps(drawn, tmp_path):
    rates = [0.1, 0.05, 0.01]
    rows = [{"type": "step", "step": 5 * (i + 1), "epoch": 1, "loss": 1.0, "lr": rate} for i, rate in enumerate(rates)]
    rows.append(
        {
            "type": "epoch",
            "epoch": 1,
            "step": 15,
            "train_loss": 1,
            "train_accuracy": 0.5,
            "val_loss": 1,
            "val_accuracy": 0.5,
        }
    )
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures.curves(log, 0.0, tmp_path)
    panels = {axes.get_title(): axes for axes in drawn["curves.png"].axes}
    assert set(panels) == {"loss", "accuracy", "learning rate"}
    (line,) = panels["learning rate"].get_lines()
    assert list(line.get_ydata()) == rates
    assert list(line.get_xdata()) == pytest.approx([5 / 15, 10 / 15, 1.0])  # steps on the epoch axis


def test_report_md_names_the_commit_that_trained_and_the_one_that_evaluated():
    line = commits_markdown({"trained_git_commit": "abc123", "git_commit": "def456", "git_dirty": True})
    assert line == "Trained at commit `abc123`; evaluated at commit `def456` with uncommitted changes."
    assert commits_markdown({"trained_git_commit": "", "git_commit": ""}).count("unknown") == 2


def test_curves_draw_validation_at_the_evaluated_epochs_only(drawn, tmp_path):
    """--val-every 2: epoch 1's row has no val keys; the val line has epoch 2 and 3's points, train all three."""
    rows = [
        {"type": "epoch", "epoch": e, "step": 10 * e, "train_loss": 1 / e, "train_accuracy": 0.5} for e in (1, 2, 3)
    ]
    for row in rows[1:]:
        row |= {"val_loss": 0.9 / row["epoch"], "val_accuracy": 0.6}
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures.curves(log, 0.0, tmp_path)
    panels = {axes.get_title(): axes for axes in drawn["curves.png"].axes}
    train, val = panels["accuracy"].get_lines()
    assert (list(train.get_xdata()), list(val.get_xdata())) == ([1, 2, 3], [2, 3])
    assert [line.get_label() for line in panels["loss"].get_lines()] == ["train", "val"]
