"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) into small PNGs.

Each function takes the split's uint8 images (N, C, H, W) and the per-sample predictions of
`exact.predict_split`, and writes one file of a fixed pixel size: `SIZES` inches x `DPI`.
"""

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mnist_dist.tracking.metrics_log import read_metrics_log

DPI = 100
SIZES = {  # (width, height) in inches; at 100 dpi, 8 x 7 is an 800 x 700 PNG
    "confusion_matrix.png": (8, 7),
    "misclassified.png": (9, 7.5),
    "samples.png": (10, 7),
    "predictions.png": (12, 7.5),
    "curves.png": (14, 4),  # loss, accuracy, learning rate
}
CORRECT, WRONG = "#1a7f37", "#cf222e"  # green and red for right and wrong predictions


def new_figure(name: str) -> Figure:
    figure = Figure(figsize=SIZES[name], dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, out_dir: Path, name: str) -> Path:
    path = out_dir / name
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": the PNG keeps its declared size
    return path


def show_image(axes, image: torch.Tensor) -> None:
    """One uint8 (C, H, W) image, grayscale or RGB, without ticks."""
    if image.shape[0] == 1:
        axes.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axes.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])


def say_nothing(figure: Figure, message: str) -> None:
    """A figure with nothing to show still gets written, saying why."""
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=14)


def confusion_matrix(confusion: list[list[int]], class_names: list[str], out_dir: Path) -> Path:
    """Row-normalized: each cell is the fraction of a true class predicted as each class (rows sum to 1)."""
    counts = torch.tensor(confusion, dtype=torch.float64)
    normalized = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    figure = new_figure("confusion_matrix.png")
    axes = figure.add_subplot()
    picture = axes.imshow(normalized.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(picture, ax=axes, fraction=0.046, label="fraction of the true class")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in ticks:
        for column in ticks:
            value = normalized[row, column].item()
            if value >= 0.005:
                color = "white" if value > 0.5 else "black"
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    axes.set_title(f"confusion matrix, normalized by true class ({int(counts.sum()):,} samples)")
    return save(figure, out_dir, "confusion_matrix.png")


def misclassified(
    images: torch.Tensor, predictions, class_names: list[str], out_dir: Path, rows: int = 4, columns: int = 6
) -> Path:
    """The most confident mistakes: wrong predictions ordered by the probability the model gave them."""
    figure = new_figure("misclassified.png")
    wrong = (predictions.predicted != predictions.labels).nonzero().squeeze(1)
    confidence = predictions.probabilities[wrong, predictions.predicted[wrong]]  # (mistakes,): p of the wrong class
    order = sorted(range(len(wrong)), key=lambda i: (-confidence[i].item(), wrong[i].item()))[: rows * columns]
    if not order:
        say_nothing(figure, "no mistakes on this split")
        return save(figure, out_dir, "misclassified.png")
    for cell, i in enumerate(order, 1):
        index = wrong[i].item()
        axes = figure.add_subplot(rows, columns, cell)
        show_image(axes, images[index])
        true, predicted = class_names[predictions.labels[index]], class_names[predictions.predicted[index]]
        axes.set_title(f"{true} / {predicted}\np={confidence[i].item():.2f}", fontsize=8, color=WRONG)
    figure.suptitle("most confident mistakes (true / predicted, p = probability of the prediction)")
    return save(figure, out_dir, "misclassified.png")


def samples(
    images: torch.Tensor, predictions, class_names: list[str], out_dir: Path, rows: int = 5, columns: int = 8
) -> Path:
    """The split's first images with the predicted class: green when right, red (with the truth) when wrong."""
    figure = new_figure("samples.png")
    for index in range(min(rows * columns, len(images))):
        axes = figure.add_subplot(rows, columns, index + 1)
        show_image(axes, images[index])
        true, predicted = predictions.labels[index].item(), predictions.predicted[index].item()
        title = class_names[predicted] if true == predicted else f"{class_names[predicted]}\n(true {class_names[true]})"
        axes.set_title(title, fontsize=8, color=CORRECT if true == predicted else WRONG)
    figure.suptitle(f"predictions on the first {min(rows * columns, len(images))} images")
    return save(figure, out_dir, "samples.png")


def predictions_with_probabilities(images: torch.Tensor, predictions, class_names: list[str], out_dir: Path) -> Path:
    """Six images beside their class probabilities: the first three, then the three the model was least sure of."""
    figure = new_figure("predictions.png")
    least_sure = predictions.probabilities.max(dim=1).values.argsort()[:3].tolist()
    chosen = list(dict.fromkeys([0, 1, 2, *least_sure]))[:6]  # fromkeys drops an image that is in both, keeps order
    grid = figure.add_gridspec(3, 4, width_ratios=[1, 2.4, 1, 2.4])
    for slot, index in enumerate(chosen):
        row, column = slot % 3, 2 * (slot // 3)  # slots 0-2 fill the left (image, bars) pair, 3-5 the right
        show_image(figure.add_subplot(grid[row, column]), images[index])
        true, predicted = predictions.labels[index].item(), predictions.predicted[index].item()
        probability_bars(
            figure.add_subplot(grid[row, column + 1]), predictions.probabilities[index], true, predicted, class_names
        )
    figure.suptitle(
        "class probabilities (left: the first images; right: the least confident; green: true, red: a wrong prediction)"
    )
    return save(figure, out_dir, "predictions.png")


def probability_bars(axes, probabilities: torch.Tensor, true: int, predicted: int, class_names: list[str]) -> None:
    """One image's class probabilities as bars: the true class green, a wrong prediction red, the rest grey;
    on a mistake the true class's label also says "(true)", so it reads without colour."""
    positions = range(len(class_names))
    colors = ["#9aa4ad"] * len(class_names)
    colors[predicted] = WRONG
    colors[true] = CORRECT  # a right prediction: the predicted class is the true one, green
    labels = [f"{name} (true)" if index == true != predicted else name for index, name in enumerate(class_names)]
    axes.barh(positions, probabilities.tolist(), color=colors)
    axes.set_yticks(positions, labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.tick_params(axis="x", labelsize=7)
    axes.set_title(f"true {class_names[true]}, predicted {class_names[predicted]}", fontsize=8)


def curves(metrics_log: Path | None, label_smoothing: float, out_dir: Path) -> Path:
    """Train and validation loss and accuracy per epoch (test, for a run that held out nothing), the
    logged per-step train loss underneath, lighter, and the learning rate of the logged steps."""
    figure = new_figure("curves.png")
    steps, epochs = read_metrics_log(metrics_log) if metrics_log and metrics_log.is_file() else ([], [])
    if not epochs:
        say_nothing(figure, "no epochs in metrics.jsonl: train with train.py to get curves")
        return save(figure, out_dir, "curves.png")
    loss_axes, accuracy_axes, lr_axes = figure.subplots(1, 3)
    x = [row["epoch"] for row in epochs]
    # An epoch line carries the global step at its end; dividing by this puts the step rows on the epoch axis.
    steps_per_epoch = epochs[0]["step"] / epochs[0]["epoch"]
    step_x = [row["step"] / steps_per_epoch for row in steps]
    if steps:
        loss_axes.plot(step_x, [row["loss"] for row in steps], color="#1f77b4", alpha=0.3, label="train (logged steps)")
    smoothing = f" (label smoothing {label_smoothing})" if label_smoothing else ""
    loss_axes.plot(x, [row["train_loss"] for row in epochs], "o-", color="#1f77b4", label="train" + smoothing)
    split = "val" if any("val_loss" in row for row in epochs) else "test"
    evaluated = [row for row in epochs if f"{split}_loss" in row]  # every epoch, or every --val-every and the last
    eval_x = [row["epoch"] for row in evaluated]
    if evaluated:  # none yet in a run stopped before its first evaluation
        loss_axes.plot(eval_x, [row[f"{split}_loss"] for row in evaluated], "s-", color="#ff7f0e", label=split)
    accuracy_axes.plot(x, [row["train_accuracy"] for row in epochs], "o-", color="#1f77b4", label="train")
    if evaluated:
        accuracy_axes.plot(eval_x, [row[f"{split}_accuracy"] for row in evaluated], "s-", color="#ff7f0e", label=split)
    for axes, name in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.set_title(name)
        axes.legend(fontsize=8)
    learning_rate(lr_axes, step_x, [row.get("lr") for row in steps])
    for axes in (loss_axes, accuracy_axes, lr_axes):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.set_xticks(x)
    return save(figure, out_dir, "curves.png")


def learning_rate(axes, step_x: list[float], rates: list[float | None]) -> None:
    """The learning rate of each logged step (metrics.jsonl's `lr`), on the epoch axis."""
    axes.set_title("learning rate")
    points = [(x, rate) for x, rate in zip(step_x, rates) if rate is not None]
    if not points:  # a log without step lines, or from before `lr` was logged
        axes.text(0.5, 0.5, "no logged steps", ha="center", va="center", transform=axes.transAxes)
        return
    axes.plot(*zip(*points), color="#6f42c1")
    axes.set_ylim(bottom=0)
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def draw_all(
    images: torch.Tensor, predictions, metrics: dict, metrics_log: Path | None, label_smoothing: float, out_dir: Path
) -> list[str]:
    """Every figure of the report; returns their file names in reading order."""
    names = metrics["class_names"]
    paths = [
        confusion_matrix(metrics["confusion_matrix"], names, out_dir),
        misclassified(images, predictions, names, out_dir),
        samples(images, predictions, names, out_dir),
        predictions_with_probabilities(images, predictions, names, out_dir),
        curves(metrics_log, label_smoothing, out_dir),
    ]
    return [path.name for path in paths]
