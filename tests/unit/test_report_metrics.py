"""The report's numbers against a hand-computed reference, and per-sample predictions against evaluate()."""

import io
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from mnist_dist.data.images import DatasetInfo, ImageSet, Normalizer
from mnist_dist.data.sharding import eval_shard
from mnist_dist.evaluate import report as eval_report
from mnist_dist.evaluate.exact import SplitPredictions, evaluate, predict_split

# Nine samples, four classes; class 3 is never true and never predicted (its ratios divide by 0).
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
PREDICTED = torch.tensor([0, 1, 0, 1, 0, 2, 2, 0, 2])
NAMES = ("zero", "one", "two", "three")
# By hand: rows are true classes, columns predicted classes.
CONFUSION = [
    [2, 1, 0, 0],
    [1, 1, 0, 0],
    [1, 0, 3, 0],
    [0, 0, 0, 0],
]
# class: (precision = TP / column sum, recall = TP / row sum, F1 = 2PR / (P + R), support = row sum)
PER_CLASS = {
    "zero": (2 / 4, 2 / 3, 4 / 7, 3),
    "one": (1 / 2, 1 / 2, 1 / 2, 2),
    "two": (3 / 3, 3 / 4, 6 / 7, 4),
    "three": (0.0, 0.0, 0.0, 0),
}


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    assert eval_report.confusion_matrix(LABELS, PREDICTED, 4).tolist() == CONFUSION


def test_per_class_precision_recall_f1_support_match_the_hand_computed_values():
    rows = eval_report.per_class_metrics(torch.tensor(CONFUSION), NAMES)
    assert [row.name for row in rows] == list(NAMES)
    for row in rows:
        precision, recall, f1, support = PER_CLASS[row.name]
        assert row.precision == pytest.approx(precision, rel=1e-12)
        assert row.recall == pytest.approx(recall, rel=1e-12)
        assert row.f1 == pytest.approx(f1, rel=1e-12)
        assert row.support == support


def test_top_confused_pairs_are_the_off_diagonal_cells_by_count_then_class():
    confusion = torch.tensor([[5, 0, 3], [1, 7, 1], [3, 0, 9]])
    pairs = eval_report.top_confused_pairs(confusion, ("a", "b", "c"))
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("a", "c", 3),
        ("c", "a", 3),
        ("b", "a", 1),
        ("b", "c", 1),
    ]
    assert len(eval_report.top_confused_pairs(confusion, ("a", "b", "c"), limit=2)) == 2


def test_metrics_hold_every_number_of_the_report():
    probabilities = torch.nn.functional.one_hot(PREDICTED, 4).float()
    predictions = SplitPredictions(0.25, LABELS, PREDICTED, probabilities)
    metrics = eval_report.build_metrics(predictions, NAMES, {"model": "m", "dataset": "d", "split": "test"})
    assert metrics["accuracy"] == 6 / 9 and metrics["correct"] == 6 and metrics["samples"] == 9
    assert metrics["loss"] == 0.25
    assert metrics["confusion_matrix"] == CONFUSION
    assert metrics["macro_precision"] == pytest.approx((1 / 2 + 1 / 2 + 1 + 0) / 4)
    assert metrics["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 0) / 4)
    assert metrics["macro_f1"] == pytest.approx((4 / 7 + 1 / 2 + 6 / 7 + 0) / 4)
    assert [row["support"] for row in metrics["per_class"]] == [3, 2, 4, 0]
    assert metrics["top_confused"][0] == {"true": "zero", "predicted": "one", "count": 1}

    output = io.StringIO()
    eval_report.print_report({**metrics, "checkpoint": "c"}, Console(file=output, width=120))
    text = output.getvalue()
    for fragment in ("66.67%", "per class", "confusion matrix", "most confused", "three"):
        assert fragment in text


def test_per_sample_predictions_agree_with_evaluate_bit_for_bit():
    """predict_split sums the loss per batch in batch order, exactly as evaluate() does."""
    torch.manual_seed(0)
    info = DatasetInfo("tiny", 1, 8, 8, 3, (0.5,), (0.25,), ("a", "b", "c"))
    data = ImageSet(torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (37,)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    single_process = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    normalize = Normalizer(info, torch.device("cpu"))
    shard = eval_shard(data, batch_size=10, rank=0, world_size=1, num_workers=0)
    expected = evaluate(model, shard, normalize, single_process)
    predictions = predict_split(model, shard, normalize, single_process)
    assert (predictions.loss, predictions.accuracy, predictions.count) == (expected.loss, expected.accuracy, 37)
    assert predictions.labels.tolist() == data.labels.tolist()  # dataset order restored
    with torch.no_grad():
        logits = model(normalize(data.images))
    assert predictions.predicted.tolist() == logits.argmax(dim=1).tolist()
    torch.testing.assert_close(predictions.probabilities, logits.softmax(dim=1))
