"""What a person sees: the config table, progress per epoch, a row per epoch, a final summary.

Only the main process prints; on the others every method is a no-op. When stdout is not a
terminal (SLURM logs, CI, pipes) the live bar becomes a plain line every `log_every` steps.
"""

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mnist_dist.config import FIELDS, Config
from mnist_dist.recipes import recipe


def epoch_columns(split: str) -> tuple[str, ...]:
    """The epoch table's header; `split`: the evaluated one, val (or test when nothing is held out)."""
    return ("epoch", "train loss", "train acc", f"{split} loss", f"{split} acc", "seconds", "samples/s")


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

    def show_config(self, config: Config, facts: dict[str, Any], sources: dict[str, str], note: str = "") -> None:
        """The system facts, then only the options that differ from the model's recipe, each with what
        set it (config.yaml holds them all); then `note` (what is evaluated when) on a line of its own."""
        if not self.enabled:
            return
        table = Table(title="mnist-dist run", show_header=True, header_style="bold")
        for column in ("", "value", "set by"):
            table.add_column(column)
        for key, value in facts.items():
            table.add_row(key, str(value), "this machine")
        expected = {**{name: spec.default for name, spec in FIELDS.items()}, **recipe(config.model)}
        table.add_row("model", config.model, sources.get("model", "default"))
        for name, value in config.to_dict().items():
            if name != "model" and value != expected[name]:
                table.add_row(name, str(value), sources.get(name, "train.py"))  # run.resolve: the run's folder
        self.console.print(table)
        if note:
            self.console.print(note)

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

    def show_speed(self, loss: float, samples_per_second: float) -> None:
        """The live bar's loss and speed (a terminal only)."""
        if self.progress is not None:
            self.progress.update(self.task, loss=f"{loss:.4f}", speed=f"{samples_per_second:,.0f}")

    def progress_line(self, step: int, loss: float, lr: float, samples_per_second: float, seconds_left: float) -> None:
        """A line in a log (not a terminal, where the live bar shows it): where the epoch stands and its ETA."""
        if self.enabled and not self.live:
            self.console.print(
                f"{self.epoch_label} {step / self.steps:4.0%} (step {step}/{self.steps}) loss {loss:.4f} "
                f"lr {lr:.4g} {samples_per_second:,.0f} samples/s, {seconds_left:.0f} s left in the epoch"
            )

    def end_epoch(self, row: dict[str, float], split: str) -> None:
        """One row of the epoch table, printed as the epoch ends (the header before the first)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if not self.enabled:
            return
        cells = (
            f"{row['epoch']}",
            f"{row['train_loss']:.4f}",
            f"{row['train_accuracy']:.2%}",
            f"{row[split + '_loss']:.4f}",
            f"{row[split + '_accuracy']:.2%}",
            f"{row['epoch_seconds']:.1f}",
            f"{row['samples_per_second']:,.0f}",
        )
        columns = epoch_columns(split)
        widths = [len(name) for name in columns]  # the header names are the widest cells but one
        widths[-1] = 10
        if not self.epoch_rows:
            self.console.print(" ".join(f"[bold]{name:>{width}}[/bold]" for name, width in zip(columns, widths)))
        self.epoch_rows.append(cells)
        self.console.print(" ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths)))

    def summary(self, results: dict[str, Any], run_dir: str | None) -> None:
        """The final results (`run_dir` None: a dry run). The epoch table stands above, printed as epochs ended."""
        if not self.enabled:
            return
        kept = f"{results['kept']} weights, step {results['kept_step']}"
        facts = {"test accuracy": f"{results['test_accuracy']:.2%} ({kept})"}
        if "val_accuracy" in results:
            facts["val accuracy"] = f"{results['val_accuracy']:.2%} ({kept})"
            facts["last val accuracy"] = f"{results['last_val_accuracy']:.2%} (last weights, step {results['steps']})"
        facts |= {
            "test loss": f"{results['test_loss']:.4f}",
            "epochs": results["epochs"],
            "optimizer steps": results["steps"],
            "seconds": results["seconds"],
            "run dir": run_dir or "(dry run: nothing written)",
        }
        totals = Table(title="summary", show_header=False)
        totals.add_column("", style="bold")
        totals.add_column("")
        for key, value in facts.items():
            totals.add_row(key, value if isinstance(value, str) else f"{value:,.4g}")
        self.console.print(totals)
