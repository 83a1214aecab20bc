"""What a sweep's runs have done so far, read from their folders alone (no W&B, no SLURM): one row
per run with its parameters, the sweep's metric, its status and its time; a rich table of the
parameters that vary (the others said once, below it) and JSON (the PNG: sweep/plot.py).

A sweep folder is what launch/slurm/sweep.sbatch writes: runs/<sweep>/sweep.yaml (the sweep file,
copied by the first task) and one run folder per task, runs/<sweep>/<task>/.
"""

import json
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from mnist_dist.checkpoint.layout import newest_checkpoint
from mnist_dist.checkpoint.run_lock import LOCK_FILE, STALE_SECONDS
from mnist_dist.sweep.spec import Sweep, SweepError, read_sweep

SWEEP_FILE = "sweep.yaml"  # the sweep file's copy in the sweep folder
# What summary.json's `seconds` measure, said under the table: a resumed run's earlier jobs, the setup,
# the data loading and the final test are not in them.
LOOP_SECONDS = "loop s: seconds of the training loop, in the job that finished the run (summary.json's seconds)"


def read_sweep_folder(folder: Path) -> tuple[Sweep, list[dict]]:
    """The sweep and one row per run folder: task, status, metric, loop_seconds, parameters."""
    if not (folder / SWEEP_FILE).is_file():
        raise SweepError(
            f"{folder} has no {SWEEP_FILE}: pass a sweep folder, runs/<sweep name>, "
            "as launch/slurm/sweep.sbatch writes it."
        )
    sweep = read_sweep(folder / SWEEP_FILE)
    runs = sorted((path for path in folder.iterdir() if (path / "config.yaml").is_file()), key=task_order)
    rows = [run_row(sweep, path) for path in runs]
    # Best first; runs without the metric yet go last, in task order.
    rows.sort(key=lambda row: (row["metric"] is None, -(row["metric"] or 0) if sweep.maximize else row["metric"] or 0))
    return sweep, rows


def task_order(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def run_row(sweep: Sweep, run_dir: Path) -> dict:
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    metric = summary.get(sweep.metric_key) if summary else None
    if metric is None:  # not finished, or a summary without it: the best epoch so far
        metric = best_in_metrics(run_dir / "metrics.jsonl", sweep)
    return {
        "task": run_dir.name,
        "status": status_of(run_dir, summary is not None),
        "metric": metric,
        "loop_seconds": summary.get("seconds") if summary else None,  # LOOP_SECONDS says what they measure
        "parameters": {name: config.get(name.replace("-", "_")) for name in sweep.parameters},
        "run_dir": str(run_dir),
    }


def best_in_metrics(path: Path, sweep: Sweep) -> float | None:
    if not path.is_file():
        return None
    values = []
    for line in path.read_text().splitlines():
        try:
            values.append(json.loads(line).get(sweep.metric_key))
        except json.JSONDecodeError:  # a line being written
            continue
    values = [value for value in values if value is not None]
    return (max(values) if sweep.maximize else min(values)) if values else None


def status_of(run_dir: Path, finished: bool) -> str:
    """finished (summary.json); running (a lock whose heartbeat is fresh); stopped (a checkpoint to
    resume from: preempted, cancelled, or crashed after one); failed (none of these)."""
    if finished:
        return "finished"
    try:
        heartbeat = float(json.loads((run_dir / LOCK_FILE).read_text()).get("heartbeat", 0))
    except (OSError, ValueError, AttributeError):
        heartbeat = 0.0
    if time.time() - heartbeat < STALE_SECONDS:
        return "running"
    return "stopped" if newest_checkpoint(run_dir) else "failed"


def varying(sweep: Sweep, rows: list[dict]) -> list[str]:
    """The parameters whose value is not the same in every run, in the sweep file's order."""
    return [name for name in sweep.parameters if len({shown(row["parameters"][name]) for row in rows}) > 1]


def show_table(sweep: Sweep, rows: list[dict], console: Console) -> None:
    """A row per run, best first: the metric, the parameters that vary; the others named once under it."""
    names = varying(sweep, rows)
    same = [f"{name} {shown(rows[0]['parameters'][name])}" for name in sweep.parameters if rows and name not in names]
    goal = "highest" if sweep.maximize else "lowest"
    table = Table(title=f"sweep {sweep.name}: {len(rows)} runs, {sweep.metric} ({goal} first)")
    for column in ("task", sweep.metric, *names, "status", "loop s"):
        table.add_column(column, justify="left" if column in ("task", "status") else "right")
    for row in rows:
        metric = "-" if row["metric"] is None else f"{row['metric']:.4f}"
        seconds = "-" if row["loop_seconds"] is None else f"{row['loop_seconds']:.1f}"
        values = [shown(row["parameters"][name]) for name in names]
        table.add_row(row["task"], metric, *values, row["status"], seconds)
    console.print(table)
    notes = ["same in every run: " + ", ".join(same)] if same else []
    console.print("\n".join([*notes, LOOP_SECONDS]), soft_wrap=True, markup=False, highlight=False)  # whole lines


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
