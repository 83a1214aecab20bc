"""The numbers of an evaluation report, and the places they go: the console, metrics.json, report.md.

Everything here is computed from the per-sample predictions of the whole split (which every rank
holds after `evaluation.predict_split`), with integer counts wherever possible, so a 1-process
and an N-process evaluation write identical files. Figures are drawn by `figures.py`.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mnist_dist import figures
from mnist_dist.errors import UserError

TOP_CONFUSED = 10  # confused pairs listed in the report


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (classes, classes): row = true class, column = predicted class."""
    pairs = labels.long() * num_classes + predicted.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)


@dataclass
class ClassMetrics:
    name: str
    precision: float  # of the samples predicted as this class, the fraction that are
    recall: float  # of the samples of this class, the fraction found
    f1: float  # harmonic mean of precision and recall
    support: int  # samples of this class in the split


def ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0  # sklearn's zero_division=0


def per_class_metrics(confusion: torch.Tensor, class_names: tuple[str, ...]) -> list[ClassMetrics]:
    true_positives = confusion.diagonal().tolist()
    predicted_as = confusion.sum(dim=0).tolist()
    support = confusion.sum(dim=1).tolist()
    rows = []
    for index, name in enumerate(class_names):
        precision = ratio(true_positives[index], predicted_as[index])
        recall = ratio(true_positives[index], support[index])
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(ClassMetrics(name, precision, recall, f1, support[index]))
    return rows


def top_confused_pairs(confusion: torch.Tensor, class_names: tuple[str, ...], limit: int = TOP_CONFUSED) -> list[dict]:
    """The most frequent mistakes, (true, predicted, count), most frequent first, ties by class index."""
    size = len(class_names)
    pairs = [(-int(confusion[t, p]), t, p) for t in range(size) for p in range(size) if t != p and confusion[t, p] > 0]
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": -negative}
        for negative, t, p in sorted(pairs)[:limit]
    ]


def build_metrics(predictions, class_names: tuple[str, ...], about: dict[str, Any]) -> dict[str, Any]:
    """All the report's numbers as one JSON-ready dict: `about` (checkpoint, dataset, split) first."""
    confusion = confusion_matrix(predictions.labels, predictions.predicted, len(class_names))
    classes = per_class_metrics(confusion, class_names)
    macro = {key: sum(getattr(row, key) for row in classes) / len(classes) for key in ("precision", "recall", "f1")}
    return {
        **about,
        "samples": predictions.count,
        "correct": predictions.correct,
        "accuracy": predictions.accuracy,
        "loss": predictions.loss,
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "macro_f1": macro["f1"],
        "per_class": [asdict(row) for row in classes],
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted class
        "top_confused": top_confused_pairs(confusion, class_names),
    }


def print_report(metrics: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    overview = Table(
        title=f"evaluation of {metrics['model']} on {metrics['dataset']} ({metrics['split']})", show_header=False
    )
    overview.add_column("", style="bold")
    overview.add_column("", justify="right")
    overview.add_row("accuracy", f"{metrics['accuracy']:.2%} ({metrics['correct']:,} of {metrics['samples']:,})")
    overview.add_row("loss", f"{metrics['loss']:.4f}")
    overview.add_row("macro F1", f"{metrics['macro_f1']:.4f}")
    console.print(overview)

    classes = Table(title="per class", header_style="bold")
    for name, justify in (
        ("class", "left"),
        ("precision", "right"),
        ("recall", "right"),
        ("F1", "right"),
        ("support", "right"),
    ):
        classes.add_column(name, justify=justify)
    for row in metrics["per_class"]:
        classes.add_row(
            row["name"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", f"{row['support']:,}"
        )
    console.print(classes)

    names = metrics["class_names"]
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)", header_style="bold")
    confusion.add_column("true \\ predicted")
    for index in range(len(names)):
        confusion.add_column(str(index), justify="right")
    for index, (name, counts) in enumerate(zip(names, metrics["confusion_matrix"])):
        cells = [
            f"[bold green]{n}[/]" if column == index else (f"[red]{n}[/]" if n else "[dim]0[/]")
            for column, n in enumerate(counts)
        ]
        confusion.add_row(f"{index} {name}", *cells)
    console.print(confusion)

    if metrics["top_confused"]:
        pairs = Table(title="most confused", header_style="bold")
        for name in ("true", "predicted as", "count"):
            pairs.add_column(name, justify="right" if name == "count" else "left")
        for pair in metrics["top_confused"]:
            pairs.add_row(pair["true"], pair["predicted"], str(pair["count"]))
        console.print(pairs)


def write_report(metrics: dict[str, Any], predictions, images: torch.Tensor, run, out_dir: Path) -> list[str]:
    """metrics.json, every figure and report.md into `out_dir` (main process only); returns the file names.

    `run` is the evaluated `trained_run.TrainedRun`: its config goes into report.md, and its
    metrics.jsonl (when the weights sit in a run directory) gives the learning curves.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        names = figures.draw_all(images, predictions, metrics, run.metrics_log, run.config.label_smoothing, out_dir)
        write_markdown(metrics, run.config.to_dict(), names, out_dir)
    except OSError as error:
        raise UserError(
            f"cannot write the report to {out_dir} ({error.strerror or error}): pass a writable --out"
        ) from None
    return ["report.md", "metrics.json", *names]


def write_markdown(metrics: dict[str, Any], config: dict[str, Any], figure_names: list[str], out_dir: Path) -> Path:
    """report.md: the numbers, every figure (by relative path, so the folder can move) and the run's config."""
    lines = [
        f"# {metrics['model']} on {metrics['dataset']} ({metrics['split']} split)",
        "",
        f"Checkpoint `{metrics['checkpoint']}`, trained on {metrics['trained_on']}.",
        "",
        "| accuracy | loss | macro precision | macro recall | macro F1 | samples |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {metrics['accuracy']:.2%} | {metrics['loss']:.4f} | {metrics['macro_precision']:.4f} | "
        f"{metrics['macro_recall']:.4f} | {metrics['macro_f1']:.4f} | {metrics['samples']:,} |",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {row['name']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']:,} |"
            for row in metrics["per_class"]
        ),
        "",
        "## Most confused pairs",
        "",
        "| true | predicted as | count |",
        "| --- | --- | ---: |",
        *(f"| {pair['true']} | {pair['predicted']} | {pair['count']} |" for pair in metrics["top_confused"]),
        "",
        "## Figures",
        "",
        *(f"![{Path(name).stem.replace('_', ' ')}]({name})\n" for name in figure_names),
        "## Config",
        "",
        "| option | value |",
        "| --- | --- |",
        *(f"| {key} | `{value!r}` |" if value == "" else f"| {key} | `{value}` |" for key, value in config.items()),
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
