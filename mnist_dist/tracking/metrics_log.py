"""Reading a run's metrics.jsonl back (figures, benchmarks): one JSON row a line, written by tracker.py."""

import json
from pathlib import Path


def read_metrics_log(path: Path) -> tuple[list[dict], list[dict]]:
    """(step lines, epoch lines) of a metrics.jsonl; an epoch logged twice (a resumed run) keeps its last line."""
    steps, epochs = [], {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if row.get("type") == "step":
            steps.append(row)
        elif row.get("type") == "epoch":
            epochs[row["epoch"]] = row
    return steps, [epochs[epoch] for epoch in sorted(epochs)]
