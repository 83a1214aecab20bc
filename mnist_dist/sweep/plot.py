"""The PNG of a sweep: the metric of each run against each parameter that varies across the runs (one
panel each), points coloured by the first categorical parameter, and a log axis where a number spans
orders of magnitude.
"""

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mnist_dist.atomic import replace_atomically
from mnist_dist.sweep.spec import Sweep
from mnist_dist.sweep.status import varying

# Always on a log axis (when positive): a learning rate's effect scales with its ratio, not its difference.
LOG_PARAMETERS = ("lr",)
DECADE = 10.0  # other positive numbers go on a log axis when max / min is more than this


def why_no_plot(sweep: Sweep, rows: list[dict]) -> str | None:
    """Why the sweep has nothing to draw yet, or None when it has."""
    if not any(row["metric"] is not None for row in rows):
        return f"no run has {sweep.metric} yet"
    if not varying(sweep, rows):
        return "every run has the same parameters"
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def log_axis(name: str, spec: dict, values: list[float]) -> bool:
    """Whether parameter `name`'s panel needs a log x axis: sampled log-uniformly, a learning rate, or
    positive values spanning more than a decade."""
    if not values or min(values) <= 0:
        return False
    if spec.get("distribution") == "log_uniform_values" or name.replace("-", "_") in LOG_PARAMETERS:
        return True
    return max(values) / min(values) > DECADE


def categories(spec: dict, values: list) -> list[str]:
    """A categorical parameter's values in the order the sweep file lists them, then any others (as
    config.yaml spells them)."""
    listed = [str(value) for value in spec.get("values", [spec.get("value")])]
    return listed + sorted({str(value) for value in values} - set(listed))


def plot(sweep: Sweep, rows: list[dict], path: Path) -> Path:
    """Draw the runs that have the metric (why_no_plot says when there are none) into the PNG `path`."""
    figure = draw(sweep, rows)
    save = lambda temporary: figure.savefig(temporary, dpi=100, format="png")  # noqa: E731
    replace_atomically(path, save, fix="pass --plot with a writable path")  # a failed write: one error line
    return path


def draw(sweep: Sweep, rows: list[dict]) -> Figure:
    """The figure of the runs that have the metric: a panel per parameter that varies."""
    names = varying(sweep, rows)
    scored = [row for row in rows if row["metric"] is not None]
    metrics = [row["metric"] for row in scored]
    grouped = next((name for name in names if not all(is_number(row["parameters"][name]) for row in scored)), None)
    colours = colour_by(sweep, scored, grouped)
    figure = Figure(figsize=(3.2 * len(names) + (1.4 if grouped else 0), 3.0), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, name in zip(figure.subplots(1, len(names), squeeze=False)[0], names):
        values = [row["parameters"][name] for row in scored]
        spec = sweep.parameters[name]
        if all(is_number(value) for value in values):
            axes.scatter(values, metrics, c=colours)
            if log_axis(name, spec, values):
                axes.set_xscale("log")
        else:  # categories: positions in the sweep file's order
            labels = categories(spec, values)
            axes.scatter([labels.index(str(value)) for value in values], metrics, c=colours)
            axes.set_xticks(range(len(labels)), labels, rotation=30)
        axes.set_xlabel(name)
        axes.set_ylabel(sweep.metric)
    if grouped:
        add_legend(figure, sweep, scored, grouped)
    figure.suptitle(f"sweep {sweep.name}")
    return figure


def colour_by(sweep: Sweep, scored: list[dict], name: str | None) -> list[str]:
    """Each run's colour: matplotlib's cycle (C0, C1, ...) by its value of parameter `name`, or C0 for all."""
    if name is None:
        return ["C0"] * len(scored)
    values = [row["parameters"][name] for row in scored]
    labels = categories(sweep.parameters[name], values)
    return [f"C{labels.index(str(value)) % 10}" for value in values]


def add_legend(figure: Figure, sweep: Sweep, scored: list[dict], name: str) -> None:
    labels = categories(sweep.parameters[name], [row["parameters"][name] for row in scored])
    handles = [
        Line2D([], [], marker="o", linestyle="", color=f"C{index % 10}", label=label)
        for index, label in enumerate(labels)
    ]
    figure.legend(handles=handles, title=name, loc="outside right upper")
