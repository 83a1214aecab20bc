"""W&B's charts of the "ranks" rows (train/stragglers.py): one chart per quantity, a line per rank.

W&B draws one chart per logged key, so a key per rank would be a chart per rank; a line series
(wandb.plot.line_series, a table with its chart) puts every rank on one. It is drawn anew from the
rows so far at each epoch's row (a few a run: each one uploads its table), so the run page shows
the latest; the rows themselves are metrics.jsonl's. Main process only, like the Tracker.
"""

import math
from typing import Any

# The rows' per-rank quantities (milliseconds per step) and their charts' titles.
QUANTITIES = {
    "data_wait_ms": "data wait per step (ms), by rank",
    "forward_ms": "forward and loss per step (ms), by rank",
    "step_ms": "step time (ms), by rank",
}
# Points in one chart (a table row each): W&B keeps the first 10,000 rows of a table logged in the
# history (wandb.Table.MAX_ROWS) and drops the rest; a longer series keeps every k-th row instead.
MAX_POINTS = 10_000


class RankSeries:
    """The "ranks" rows this job logged: their steps, and each quantity's values per rank."""

    def __init__(self):
        self.steps: list[int] = []
        self.values: dict[str, list[list[float]]] = {name: [] for name in QUANTITIES}  # [row][rank]

    def add(self, step: int, row: dict[str, Any]) -> None:
        self.steps.append(step)
        for name in QUANTITIES:
            self.values[name].append(row[name])

    def charts(self, wandb) -> dict[str, Any]:
        """{"ranks/<quantity>": its line series chart} for W&B's log (`wandb`: the module); {} before any row."""
        if not self.steps:
            return {}
        ranks = range(len(self.values["step_ms"][0]))
        keys = [f"rank {rank}" for rank in ranks]
        picked = range(0, len(self.steps), math.ceil(len(self.steps) * len(ranks) / MAX_POINTS))
        return {
            f"ranks/{name}": wandb.plot.line_series(
                xs=[self.steps[index] for index in picked],
                ys=[[self.values[name][index][rank] for index in picked] for rank in ranks],
                keys=keys,
                title=title,
                xname="step",
            )
            for name, title in QUANTITIES.items()
        }
