"""What a person sees: the config table, progress per epoch, a row per epoch, a final summary, and
what the run wrote and what to run next.

Only the main process prints; on the others every method is a no-op. When stdout is not a
terminal (SLURM logs, CI, pipes) the live bar becomes a plain line at every tenth of the epoch, and
the console is as wide as its widest line: a log keeps whole values (a 40-digit git commit, a long
run folder), never cut or wrapped at 80 columns as rich does for a file.
"""

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mnist_dist.config import FIELDS, Config
from mnist_dist.recipes import recipe

LOG_WIDTH = 10_000  # columns of a console that is not a terminal: wider than any line a run prints


def whole_line_console() -> Console:
    """A rich Console whose lines and tables stay whole where stdout is not a terminal (a SLURM .out
    file, a pipe): rich would otherwise fit them to 80 columns, cutting values with an ellipsis."""
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = LOG_WIDTH
    return console


def epochs_trained(epochs: int, steps: int, steps_per_epoch: int) -> str:
    """The summary's epochs: '3' for whole epochs; where --max-steps (or a dry run) ended one early,
    the fraction and where it stopped: '0.25 (5 of epoch 1's 20 steps)'."""
    into_next = steps - epochs * steps_per_epoch  # optimizer steps taken in the epoch that did not finish
    if not 0 < into_next < steps_per_epoch:
        return str(epochs)
    return f"{steps / steps_per_epoch:.2f} ({into_next} of epoch {epochs + 1}'s {steps_per_epoch} steps)"


def epoch_columns(split: str) -> tuple[str, ...]:
    """The epoch table's header; `split`: the evaluated one, val (or test when nothing is held out)."""
    speed = ("seconds", "samples/s", "GFLOP/s", "MFU")  # training's: its evaluation is not in them
    return ("epoch", "train loss", "train acc", f"{split} loss", f"{split} acc", *speed)


def flops_cells(row: dict[str, Any]) -> tuple[str, str]:
    """The epoch row's achieved GFLOP/s (10^9 FLOP a second, all processes) and MFU (a share of the job's
    matmul peak): '58.3', '38.1%'; '-' where unknown."""
    achieved, mfu = row.get("achieved_flops_per_second"), row.get("mfu")
    return (
        f"{achieved / 1e9:,.1f}" if achieved is not None else "-",
        f"{mfu:.1%}" if mfu is not None else "-",
    )


def utilization_line(results: dict[str, Any]) -> str | None:
    """The summary's MFU: '38.1% (58.3 GFLOP/s of a 154.0 GFLOP/s matmul peak; 4.03 MFLOP a sample)'."""
    if results.get("mfu") is None:
        return None
    achieved, peak = results["achieved_flops_per_second"] / 1e9, results["peak_flops_per_second"] / 1e9
    per_sample = results["train_flops_per_sample"] / 1e6
    of = f"{achieved:,.1f} GFLOP/s of a {peak:,.1f} GFLOP/s matmul peak"
    return f"{results['mfu']:.1%} ({of}; {per_sample:.3g} MFLOP a sample)"


class TrainingConsole:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = whole_line_console()
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.epoch_rows: list[tuple[str, ...]] = []

    def print(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def show_config(self, config: Config, facts: dict[str, Any], sources: dict[str, str], note: str = "") -> None:
        """The system facts, then only the options that differ from the model's recipe or were chosen for a
        resume on another number of processes, each with what set it (config.yaml holds them all); then
        `note` (what is evaluated when) on a line of its own."""
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
            resized = sources.get(name, "").startswith("resumed on")  # chosen to keep a checkpoint's global batch
            if name != "model" and (value != expected[name] or resized):
                table.add_row(name, str(value), sources.get(name, "train.py"))  # train.job.resolve: the run's folder
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

    @property
    def shows_bar(self) -> bool:
        """Whether a live bar is on screen (a terminal, inside an epoch): only then is a loss read for it."""
        return self.progress is not None

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def show_speed(self, loss: float, samples_per_second: float) -> None:
        """The live bar's loss and speed (a terminal only): the mean loss per sample and samples/s since the last."""
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
            f"{row[split + '_loss']:.4f}" if split + "_loss" in row else "-",  # not evaluated (--val-every)
            f"{row[split + '_accuracy']:.2%}" if split + "_accuracy" in row else "-",
            f"{row['epoch_seconds']:.1f}",
            f"{row['samples_per_second']:,.0f}",
            *flops_cells(row),
        )
        columns = epoch_columns(split)
        widths = [len(name) for name in columns]  # the header names are the widest cells but these
        widths[-3:] = [10, 9, 6]  # samples/s; GFLOP/s up to 99,999.9 (a GPU's); MFU up to 100.0%
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
            "epochs": epochs_trained(results["epochs"], results["steps"], results["steps_per_epoch"]),
            "optimizer steps": results["steps"],
            "seconds": results["seconds"],
        }
        mfu = utilization_line(results)
        if mfu is not None:
            facts["MFU"] = mfu
        facts["run dir"] = run_dir or "(dry run: nothing written)"
        totals = Table(title="summary", show_header=False)
        totals.add_column("", style="bold")
        totals.add_column("")
        for key, value in facts.items():
            totals.add_row(key, value if isinstance(value, str) else f"{value:,.4g}")
        self.console.print(totals)

    def closing(self, run_dir: str, written: list[str], commands: list[tuple[str, str]]) -> None:
        """The run's last lines: the files `written` in `run_dir`, then each of `commands` (the command,
        what it does) to run next, as evaluate.py ends with the files of its report."""
        if not self.enabled:
            return
        self.console.print(f"run written to {run_dir}/: {', '.join(written)}", markup=False)
        self.console.print("next:")
        width = max(len(command) for command, _ in commands)
        for command, purpose in commands:
            self.console.print(f"  {command:<{width}}  # {purpose}", markup=False)
