"""What a sweep's runs have done so far, read from their folders alone (no W&B, no SLURM): one row
per run with its parameters, the sweep's metric, its status and its time; a rich table of the
parameters that vary (the others said once, below it) and JSON (the PNG: sweep/plot.py).

A sweep folder is what launch/slurm/sweep.sbatch writes: runs/<sweep>/sweep.yaml (the sweep file,
copied by the first task) and one run folder per task, runs/<sweep>/<task>/. A run whose files are
not as train.py writes them (edited, cut short) is listed as `damaged: <file>`, last, with a line
under the table saying how: one such run never hides the others' summary.
"""

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mnist_dist.checkpoint.layout import newest_checkpoint
from mnist_dist.checkpoint.run_lock import live_holder
from mnist_dist.errors import first_line
from mnist_dist.sweep.spec import Sweep, SweepError, read_sweep
from mnist_dist.yaml_files import read_yaml_mapping

SWEEP_FILE = "sweep.yaml"  # the sweep file's copy in the sweep folder
# What summary.json's `seconds` measure, said under the table: a resumed run's earlier jobs, the setup,
# the data loading and the final test are not in them.
LOOP_SECONDS = "loop s: seconds of the training loop, in the job that finished the run (summary.json's seconds)"


def read_sweep_folder(folder: Path) -> tuple[Sweep, list[dict]]:
    """The sweep and one row per run folder (run_row), best first."""
    if not (folder / SWEEP_FILE).is_file():
        raise SweepError(
            f"{folder} has no {SWEEP_FILE}: pass a sweep folder, runs/<sweep name>, "
            "as launch/slurm/sweep.sbatch writes it."
        )
    sweep = read_sweep(folder / SWEEP_FILE)
    runs = sorted((path for path in folder.iterdir() if (path / "config.yaml").is_file()), key=task_order)
    rows = [run_row(sweep, path) for path in runs]
    rows.sort(key=lambda row: rank(sweep, row["metric"]))
    return sweep, rows


def rank(sweep: Sweep, metric: float | None) -> tuple[bool, float]:
    """A row's place: best first; runs without the metric yet (or damaged, or NaN) last, in task order."""
    if metric is None or math.isnan(metric):
        return (True, 0.0)
    return (False, -metric if sweep.maximize else metric)


def task_order(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


class DamagedRun(Exception):
    """A file of one run folder that is not as train.py writes it (edited, cut, another program's): that run
    is listed as damaged and the others are ranked as usual. The message names the problem and the fix."""

    def __init__(self, file: str, message: str):
        super().__init__(message)
        self.file = file  # the file's name, for the status column: damaged: summary.json


def run_row(sweep: Sweep, run_dir: Path) -> dict:
    """One run's row: task, status, metric, loop_seconds, parameters, run_dir, and problem (None, or why
    its status is `damaged: <file>`)."""
    row = {"task": run_dir.name, "metric": None, "loop_seconds": None, "parameters": {}, "run_dir": str(run_dir)}
    redo = f"delete {run_dir} and run task {run_dir.name} again to redo the run"
    try:
        config = read_yaml_mapping(run_dir / "config.yaml", error=SweepError, fix=redo)
    except SweepError as problem:
        return row | {"status": "damaged: config.yaml", "problem": str(problem)}
    row["parameters"] = {name: config.get(name.replace("-", "_")) for name in sweep.parameters}
    try:
        summary = read_object(run_dir / "summary.json", redo)
        metric = number_in(summary, sweep.metric_key, run_dir / "summary.json", redo)
        seconds = number_in(summary, "seconds", run_dir / "summary.json", redo)  # LOOP_SECONDS says what they measure
        if metric is None:  # not finished, or a summary without it: the best epoch so far
            metric = best_in_metrics(run_dir / "metrics.jsonl", sweep, redo)
    except DamagedRun as problem:
        return row | {"status": f"damaged: {problem.file}", "problem": str(problem)}
    status = status_of(run_dir, summary is not None)
    return row | {"status": status, "metric": metric, "loop_seconds": seconds, "problem": None}


def read_object(path: Path, redo: str) -> dict | None:
    """The JSON object in `path` (summary.json), or None when there is none."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as problem:  # ValueError: cut short, not JSON, not UTF-8
        raise DamagedRun(path.name, f"{path} cannot be read as JSON ({first_line(problem)}): {redo}.") from None
    if not isinstance(data, dict):
        raise DamagedRun(path.name, f"{path} holds a JSON {type(data).__name__}, not an object: {redo}.")
    return data


def number_in(row: dict | None, key: str, path: Path, redo: str) -> float | None:
    """row[key] when it is a number, None when `row` has no `key`: the number a file of the run holds."""
    value = None if row is None else row.get(key)
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise DamagedRun(path.name, f"{path}: {key} is a {type(value).__name__}, not a number: {redo}.")


def best_in_metrics(path: Path, sweep: Sweep, redo: str) -> float | None:
    """The best value of the sweep's metric in metrics.jsonl so far, or None."""
    try:
        lines = path.read_text().splitlines() if path.is_file() else []
    except (OSError, ValueError) as problem:
        raise DamagedRun(path.name, f"{path} cannot be read ({first_line(problem)}): {redo}.") from None
    values = []
    for line in lines:
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # a line being written
            continue
        if not isinstance(row, dict):
            raise DamagedRun(path.name, f"{path} holds a JSON {type(row).__name__} as a line: {redo}.")
        values.append(number_in(row, sweep.metric_key, path, redo))
    values = [value for value in values if value is not None and not math.isnan(value)]  # NaN: a diverged epoch
    return (max(values) if sweep.maximize else min(values)) if values else None


def status_of(run_dir: Path, finished: bool) -> str:
    """finished (summary.json); running (its lock's holder is not gone: checkpoint/run_lock.py, which a
    job paused on this host or a lock still being written count as running too); stopped (a checkpoint to
    resume from: preempted, cancelled, or crashed after one); failed (none of these)."""
    if finished:
        return "finished"
    if live_holder(run_dir) is not None:
        return "running"
    return "stopped" if newest_checkpoint(run_dir) else "failed"


def varying(sweep: Sweep, rows: list[dict]) -> list[str]:
    """The parameters whose value is not the same in every run (whose config.yaml could be read), in the
    sweep file's order."""
    known = [row["parameters"] for row in rows if row["parameters"]]
    return [name for name in sweep.parameters if len({shown(parameters[name]) for parameters in known}) > 1]


def show_table(sweep: Sweep, rows: list[dict], console: Console) -> None:
    """A row per run, best first: the metric, the parameters that vary; the others named once under it."""
    names = varying(sweep, rows)
    first = next((row["parameters"] for row in rows if row["parameters"]), None)
    same = [f"{name} {shown(first[name])}" for name in sweep.parameters if first and name not in names]
    goal = "highest" if sweep.maximize else "lowest"
    # Text, not markup: a run's values are shown as written, `[/x]` in a config.yaml included.
    table = Table(title=Text(f"sweep {sweep.name}: {len(rows)} runs, {sweep.metric} ({goal} first)"))
    for column in ("task", sweep.metric, *names, "status", "loop s"):
        table.add_column(Text(column), justify="left" if column in ("task", "status") else "right")
    for row in rows:
        metric = "-" if row["metric"] is None else f"{row['metric']:.4f}"
        seconds = "-" if row["loop_seconds"] is None else f"{row['loop_seconds']:.1f}"
        values = [shown(row["parameters"].get(name, "-")) for name in names]  # "-": config.yaml damaged
        table.add_row(*map(Text, (row["task"], metric, *values, row["status"], seconds)))
    console.print(table)
    notes = ["same in every run: " + ", ".join(same)] if same else []
    notes += [f"task {row['task']} is damaged: {row['problem']}" for row in rows if row["problem"]]
    console.print("\n".join([*notes, LOOP_SECONDS]), soft_wrap=True, markup=False, highlight=False)  # whole lines


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
