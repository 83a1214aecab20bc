"""What a person sees: the config table, progress per epoch, a row per epoch, a final summary.

Only the main process prints; on the others every method is a no-op. When stdout is not a
terminal (SLURM logs, CI, pipes) the live bar becomes a plain line every `log_every` steps.
"""

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

EPOCH_COLUMNS = ("epoch", "train loss", "train acc", "eval loss", "eval acc", "seconds", "samples/s")


class TrainingConsole:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = Console(highlight=False, soft_wrap=True)  # log lines stay whole in files
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.epoch_rows: list[tuple[str, ...]] = []

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def show_config(self, config: dict[str, Any], facts: dict[str, Any]) -> None:
        if not self.enabled:
            return
        table = Table(title="mnist-dist run", show_header=True, header_style="bold")
        table.add_column("option")
        table.add_column("value")
        for key, value in {**facts, **config}.items():
            table.add_row(key, str(value))
        self.console.print(table)

    def start_epoch(self, epoch: int, epochs: int, steps: int, completed: int = 0) -> None:
        self.epoch_label = f"epoch {epoch + 1}/{epochs}"
        self.steps = steps
        if self.enabled and self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} samples/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.progress.add_task(self.epoch_label, total=steps, completed=completed, loss="-", speed="-")
            self.progress.start()

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def log_step(self, step_in_epoch: int, loss: float, lr: float, samples_per_second: float) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, loss=f"{loss:.4f}", speed=f"{samples_per_second:,.0f}")
        else:
            self.console.print(
                f"{self.epoch_label} step {step_in_epoch}/{self.steps} loss {loss:.4f} "
                f"lr {lr:.4g} {samples_per_second:,.0f} samples/s"
            )

    def end_epoch(self, row: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if not self.enabled:
            return
        cells = (
            f"{row['epoch']}",
            f"{row['train_loss']:.4f}",
            f"{row['train_accuracy']:.2%}",
            f"{row['eval_loss']:.4f}",
            f"{row['eval_accuracy']:.2%}",
            f"{row['epoch_seconds']:.1f}",
            f"{row['samples_per_second']:,.0f}",
        )
        widths = [len(name) for name in EPOCH_COLUMNS]  # the header names are the widest cells but one
        widths[-1] = 10
        if not self.epoch_rows:
            self.console.print(" ".join(f"[bold]{name:>{width}}[/bold]" for name, width in zip(EPOCH_COLUMNS, widths)))
        self.epoch_rows.append(cells)
        self.console.print(" ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths)))

    def summary(self, results: dict[str, Any], run_dir: str | None) -> None:
        """The epoch table again, whole, and the final results (`run_dir` None: a dry run)."""
        if not self.enabled:
            return
        facts = {
            "final eval accuracy": f"{results['final_eval_accuracy']:.2%}",
            "best eval accuracy": f"{results['best_eval_accuracy']:.2%}",
            "final eval loss": f"{results['final_eval_loss']:.4f}",
            "epochs": results["epochs"],
            "optimizer steps": results["steps"],
            "seconds": results["seconds"],
            "run dir": run_dir or "(dry run: nothing written)",
        }
        epochs = Table(title="epochs", header_style="bold")
        for name in EPOCH_COLUMNS:
            epochs.add_column(name, justify="right")
        for cells in self.epoch_rows:
            epochs.add_row(*cells)
        totals = Table(title="summary", show_header=False)
        totals.add_column("", style="bold")
        totals.add_column("")
        for key, value in facts.items():
            totals.add_row(key, value if isinstance(value, str) else f"{value:,.4g}")
        self.console.print(epochs)
        self.console.print(totals)
