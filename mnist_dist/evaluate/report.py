"""The numbers of an evaluation report, and the places they go: the console, metrics.json, report.md.

Everything here is computed from the per-sample predictions of the whole split (which every rank
holds after `evaluation.predict_split`), with integer counts wherever possible, so a 1-process
and an N-process evaluation write identical files. Figures are drawn by `figures.py`.
"""

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mnist_dist.atomic import writing
from mnist_dist.evaluate import figures
from mnist_dist.tracking.console import whole_line_console

TOP_CONFUSED = 10  # confused pairs listed in the report


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (classes, classes): row = true class, column = predicted class."""
    pairs = labels.long() * num_classes + predicted.long()  # one id per cell, so one bincount counts them all
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
    """The report's tables on the console: the totals, per class, the confusion matrix, the most confused pairs."""
    console = console or whole_line_console()
    console.print(overview_table(metrics))
    console.print(per_class_table(metrics["per_class"]))
    console.print(confusion_table(metrics["confusion_matrix"], metrics["class_names"]))
    if metrics["top_confused"]:
        console.print(confused_pairs_table(metrics["top_confused"]))


def overview_table(metrics: dict[str, Any]) -> Table:
    title = f"evaluation of {metrics['model']} on {metrics['dataset']} ({metrics['split']})"
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("accuracy", f"{metrics['accuracy']:.2%} ({metrics['correct']:,} of {metrics['samples']:,})")
    table.add_row("loss", f"{metrics['loss']:.4f}")
    table.add_row("macro F1", f"{metrics['macro_f1']:.4f}")
    return table


def per_class_table(per_class: list[dict[str, Any]]) -> Table:
    table = Table(title="per class", header_style="bold")
    table.add_column("class", justify="left")
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    for row in per_class:
        table.add_row(
            row["name"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", f"{row['support']:,}"
        )
    return table


def confusion_table(confusion: list[list[int]], class_names: list[str]) -> Table:
    """Counts, the diagonal (right) in green, mistakes in red, empty cells dimmed so the mistakes stand out."""
    table = Table(title="confusion matrix (rows: true, columns: predicted)", header_style="bold")
    table.add_column("true \\ predicted")
    for index in range(len(class_names)):
        table.add_column(str(index), justify="right")
    for index, (name, counts) in enumerate(zip(class_names, confusion)):
        cells = [
            f"[bold green]{n}[/]" if column == index else (f"[red]{n}[/]" if n else "[dim]0[/]")
            for column, n in enumerate(counts)
        ]
        table.add_row(f"{index} {name}", *cells)
    return table


def confused_pairs_table(top_confused: list[dict[str, Any]]) -> Table:
    table = Table(title="most confused", header_style="bold")
    for name in ("true", "predicted as", "count"):
        table.add_column(name, justify="right" if name == "count" else "left")
    for pair in top_confused:
        table.add_row(pair["true"], pair["predicted"], str(pair["count"]))
    return table


def write_report(metrics: dict[str, Any], predictions, images: torch.Tensor, trained, out_dir: Path) -> list[str]:
    """metrics.json, every figure and report.md into `out_dir` (main process only); returns the file names.

    `trained` is the evaluated `trained_model.TrainedModel`: its config goes into report.md, and its
    metrics.jsonl (when the weights sit in a run directory) gives the learning curves. Everything is
    written into a hidden folder beside `out_dir` first, then moved in: a failed write (a full disk)
    leaves `out_dir` as it was, an earlier report in it included.
    """
    staging = out_dir.parent / f".{out_dir.name}.partial"
    try:
        with writing(out_dir, fix="free space or pass a writable --out, then run evaluate.py again"):
            shutil.rmtree(staging, ignore_errors=True)  # left by a crash
            staging.mkdir(parents=True)
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            names = figures.draw_all(
                images, predictions, metrics, trained.metrics_log, trained.config.label_smoothing, staging
            )
            write_markdown(metrics, trained.config.to_dict(), names, staging)
            written = ["report.md", "metrics.json", *names]
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in written:
                os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def write_markdown(metrics: dict[str, Any], config: dict[str, Any], figure_names: list[str], out_dir: Path) -> Path:
    """report.md: the numbers, every figure (by relative path, so the folder can move) and the run's config."""
    lines = [
        f"# {metrics['model']} on {metrics['dataset']} ({metrics['split']} split)",
        "",
        f"Checkpoint `{metrics['checkpoint']}`, trained on {metrics['trained_on']}.",
        "",
        commits_markdown(metrics),
        "",
        *overview_markdown(metrics),
        *per_class_markdown(metrics["per_class"]),
        *confused_pairs_markdown(metrics["top_confused"]),
        "## Figures",
        "",
        *(f"![{Path(name).stem.replace('_', ' ')}]({name})\n" for name in figure_names),
        *config_markdown(config),
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def commits_markdown(metrics: dict[str, Any]) -> str:
    """The line that names the code: the commit that trained the weights and the one that evaluated them."""

    def commit(key: str) -> str:
        return f"`{metrics[key]}`" if metrics.get(key) else "unknown"

    changes = " with uncommitted changes" if metrics.get("git_dirty") else ""
    return f"Trained at commit {commit('trained_git_commit')}; evaluated at commit {commit('git_commit')}{changes}."


def markdown_table(header: str, alignment: str, rows: Iterable[str]) -> list[str]:
    """A Markdown table and the blank line after it; `alignment` is its `| --- | ---: |` line (---: aligns right)."""
    return [header, alignment, *rows, ""]


def overview_markdown(metrics: dict[str, Any]) -> list[str]:
    row = (
        f"| {metrics['accuracy']:.2%} | {metrics['loss']:.4f} | {metrics['macro_precision']:.4f} | "
        f"{metrics['macro_recall']:.4f} | {metrics['macro_f1']:.4f} | {metrics['samples']:,} |"
    )
    header = "| accuracy | loss | macro precision | macro recall | macro F1 | samples |"
    return markdown_table(header, "| ---: | ---: | ---: | ---: | ---: | ---: |", [row])


def per_class_markdown(per_class: list[dict[str, Any]]) -> list[str]:
    rows = (
        f"| {row['name']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']:,} |"
        for row in per_class
    )
    header = "| class | precision | recall | F1 | support |"
    return ["## Per class", "", *markdown_table(header, "| --- | ---: | ---: | ---: | ---: |", rows)]


def confused_pairs_markdown(top_confused: list[dict[str, Any]]) -> list[str]:
    rows = (f"| {pair['true']} | {pair['predicted']} | {pair['count']} |" for pair in top_confused)
    return [
        "## Most confused pairs",
        "",
        *markdown_table("| true | predicted as | count |", "| --- | --- | ---: |", rows),
    ]


def config_markdown(config: dict[str, Any]) -> list[str]:
    # An empty string would be an empty code span (``), which Markdown shows as nothing: write '' instead.
    rows = (f"| {key} | `{value!r}` |" if value == "" else f"| {key} | `{value}` |" for key, value in config.items())
    return ["## Config", "", *markdown_table("| option | value |", "| --- | --- |", rows)]
