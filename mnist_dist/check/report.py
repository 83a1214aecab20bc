"""The check's findings: a row per thing checked, the one table rank 0 prints, the JSON for CI (--json),
and the verdict: the first row that does not hold, as the one line `error: check failed: CHECK: WHY`.

Every rank builds the same rows from the same gathered numbers, so every rank reaches the same verdict
without another collective; only the main process prints and writes.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from mnist_dist.atomic import write_atomically
from mnist_dist.tracking.console import whole_line_console


@dataclass
class Row:
    check: str  # launch, all-reduce, shards, equivalence, step time
    subject: str  # what the row is about: "rank 1", "gloo 4 KiB", "digits train"
    result: str  # what was measured, in words and units
    ok: bool = True
    why: str = ""  # when not ok: the problem and its fix, in one line
    values: dict = field(default_factory=dict)  # the row's numbers, for --json


class CheckFailed(Exception):
    """A check did not hold, or a collective of the check failed: exit 1 and one line naming the check.

    A verdict is the same on every rank (every rank reads the same gathered numbers): said once. A
    collective that failed is this rank's own finding: each rank says its own."""

    exit_code = 1

    def __init__(self, check: str, why: str, same_on_every_rank: bool = True):
        super().__init__(f"check failed: {check}: {why}")
        self.same_on_every_rank = same_on_every_rank


class Report:
    def __init__(self, processes: int):
        self.processes = processes
        self.rows: list[Row] = []
        self.stopped: str | None = None  # an error that ended the checks before their end (its first line)

    def add(self, rows: list[Row]) -> None:
        self.rows += rows

    @property
    def failure(self) -> Row | None:
        """The first row that does not hold (the checks run in order: the launch, then what builds on it)."""
        return next((row for row in self.rows if not row.ok), None)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise CheckFailed(self.failure.check, self.failure.why)

    def show(self) -> None:
        """The table on stdout, whole even in a log file (a SLURM .out)."""
        plural = "process" if self.processes == 1 else "processes"
        table = Table(title=f"mnist-dist launch check: {self.processes} {plural}", header_style="bold")
        for column in ("check", "on", "result", ""):
            table.add_column(column)
        for row in self.rows:
            verdict = "ok" if row.ok else "[bold red]FAILED[/bold red]"
            table.add_row(row.check, row.subject, row.result, verdict)
        whole_line_console().print(table)

    def as_json(self) -> dict:
        failure = self.failure
        verdict = f"{failure.check}: {failure.why}" if failure else self.stopped
        rows = list(map(asdict, self.rows))
        return {"ok": verdict is None, "failed": verdict, "processes": self.processes, "rows": rows}

    def write_json(self, path: Path) -> None:
        """--json: the table's rows and the verdict, written whole or not at all."""
        fix = "pass a writable path to --json"
        write_atomically(path, json.dumps(self.as_json(), indent=2) + "\n", fix=fix)
