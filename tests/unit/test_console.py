"""What a person reads, without processes: whole values in a log, how far a run went, what it wrote
and what to run next, a live bar whose loss is fresh, and output whose reader has gone."""

import os
import stat
import sys

import pytest
import torch

from mnist_dist.commands import ReaderMayLeave, output_may_close
from mnist_dist.config import make_config
from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.train.final import next_commands, written_files
from mnist_dist.train.progress import ProgressReport
from mnist_dist.train.results import EpochSums

COMMIT = "b769490cd64e73818b2b746b5a1f0c2d3e4f5a6b"
RUN_DIR = "runs/cnn-digits-20261207-154501-with-a-name-long-enough-to-be-cut-at-eighty-columns"


def test_a_log_keeps_whole_values_where_rich_would_cut_them_at_80_columns(capsys):
    console = TrainingConsole(enabled=True)  # pytest's captured stdout is not a terminal, as a SLURM log
    config = make_config({"model": "cnn", "batch_size": 128, "run_dir": RUN_DIR})
    sources = {"batch_size": "recipe of cnn (256 over 2 processes)", "run_dir": "flag"}
    console.show_config(config, {"git_commit": COMMIT}, sources)
    lines = capsys.readouterr().out.splitlines()
    assert any(COMMIT in line and "this machine" in line for line in lines)
    assert any(RUN_DIR in line and "flag" in line for line in lines)
    assert any("128" in line and "recipe of cnn (256 over 2 processes)" in line for line in lines)
    assert not any("…" in line for line in lines)


RESULTS = {"test_accuracy": 0.9, "test_loss": 0.3, "kept": "last", "kept_step": 5, "seconds": 1.0}


@pytest.mark.parametrize(
    ("epochs", "steps", "shown"),
    [(3, 60, "3"), (0, 5, "0.25 (5 of epoch 1's 20 steps)"), (1, 30, "1.50 (10 of epoch 2's 20 steps)")],
)
def test_the_summary_says_how_far_a_run_went_in_epochs(capsys, epochs, steps, shown):
    """--max-steps 5 of an epoch's 20 steps said "epochs 0"."""
    results = {**RESULTS, "epochs": epochs, "steps": steps, "steps_per_epoch": 20}
    TrainingConsole(enabled=True).summary(results, "runs/x")
    row = next(line for line in capsys.readouterr().out.splitlines() if "│ epochs " in line)
    assert row.split("│")[2].strip() == shown


def test_the_end_of_a_run_lists_what_it_wrote_and_the_commands_to_run_next(tmp_path, capsys):
    for name in ("model.safetensors", "last.safetensors", "summary.json", "metrics.jsonl", "config.yaml"):
        (tmp_path / name).write_text("")
    (tmp_path / "checkpoints" / "step-000005").mkdir(parents=True)
    config = make_config({"run_dir": str(tmp_path), "run_name": "x", "schedule": "none"})
    offline = str(tmp_path / "wandb" / "offline-run-20261207_154501-abc")
    TrainingConsole(enabled=True).closing(str(tmp_path), written_files(tmp_path), next_commands(config, offline))
    out = capsys.readouterr().out
    files = "model.safetensors, last.safetensors, summary.json, metrics.jsonl, config.yaml, checkpoints/"
    assert f"run written to {tmp_path}/: {files}" in out
    assert f"python evaluate.py --checkpoint {tmp_path}" in out
    assert "the same command" in out and "--epochs or --max-steps" in out
    assert f"wandb sync {offline}" in out


def test_a_planned_schedule_is_not_stretched_and_w_and_b_online_needs_no_sync(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    config = make_config({"run_dir": str(tmp_path), "run_name": "x", "schedule": "cosine"})
    commands = " ".join(command + " " + purpose for command, purpose in next_commands(config, None))
    assert "cosine schedule is planned" in commands and "--run-name" in commands
    assert "wandb sync" not in commands


class Bar:
    """A terminal's console, recording what its live bar shows."""

    shows_bar = True

    def __init__(self):
        self.shown: list[tuple[float, float]] = []

    def start_epoch(self, *args, **kwargs) -> None: ...

    def advance(self) -> None: ...

    def progress_line(self, *args) -> None: ...

    def show_speed(self, loss: float, samples_per_second: float) -> None:
        self.shown.append((loss, samples_per_second))


class NoTracker:
    def log(self, *args) -> None: ...


def test_the_live_bar_shows_the_running_loss_from_the_first_step_not_at_log_every():
    bar = Bar()
    report = ProgressReport(bar, NoTracker(), log_every=50, world_size=1)
    sums = EpochSums(torch.device("cpu"))
    report.start_epoch(0, 1, first_step=1, last_step=20, sums=sums)
    sums.loss += 32 * 2.25  # a mean loss of 2.25 per sample
    sums.samples += 32
    report.after_step(1, 1, samples=32, sums=sums, lr=0.1)
    assert [loss for loss, _ in bar.shown] == [2.25]


class Rows:
    def __init__(self):
        self.rows = []

    def log(self, kind, step, metrics) -> None:
        self.rows.append((step, metrics["loss"]))


def steps_logged(first_step: int, losses: list[float], saved: dict | None = None) -> tuple[list, EpochSums]:
    """Train steps `first_step`.. of a 10-step epoch with these per-sample losses (4 samples a step),
    logging every 4 steps; from `saved` epoch sums (a checkpoint's) where given. The rows logged."""
    rows = Rows()
    report = ProgressReport(Bar(), rows, log_every=4, world_size=1)
    sums = EpochSums(torch.device("cpu"), saved)
    report.start_epoch(0, 1, first_step=first_step, last_step=10, sums=sums)
    for step, loss in enumerate(losses, start=first_step):
        sums.loss += 4 * loss
        sums.samples += 4
        report.after_step(step, step, samples=4, sums=sums, lr=0.1)
    return rows.rows, sums


def test_a_resumed_run_logs_the_rows_an_uninterrupted_one_logs():
    losses = [float(step) for step in range(1, 11)]
    uninterrupted, _ = steps_logged(1, losses)
    first, sums = steps_logged(1, losses[:6])  # a checkpoint after step 6, between the rows of 4 and 8
    resumed, _ = steps_logged(7, losses[6:], saved=sums.saved())
    assert uninterrupted == [(4, 2.5), (8, 6.5)]
    assert first + resumed == uninterrupted  # step 8's row averages steps 5-8, not 7-8


def test_a_reader_that_leaves_costs_the_writer_nothing(capsys):
    reading, writing = os.pipe()
    os.close(reading)
    with os.fdopen(writing, "w") as stream:
        out = ReaderMayLeave(stream, note="note: gone")
        out.write("a line\n")
        out.flush()  # the pipe's reader has gone: BrokenPipeError, caught
        out.write("dropped\n")
        out.flush()
        assert out.gone and stat.S_ISCHR(os.fstat(writing).st_mode)  # /dev/null, for Python's flush at exit
    assert capsys.readouterr().err == "note: gone\n"


def test_a_command_wraps_stdout_and_stderr_while_it_runs_and_restores_them():
    saved = sys.stdout, sys.stderr
    with output_may_close():
        assert isinstance(sys.stdout, ReaderMayLeave) and isinstance(sys.stderr, ReaderMayLeave)
        assert sys.stdout.isatty() == saved[0].isatty()  # what rich asks of it, answered by the stream
    assert (sys.stdout, sys.stderr) == saved


def test_every_console_keeps_lines_whole_where_stdout_is_not_a_terminal(capsys):
    # evaluate.py's report and the sweep summary print through the same console as training.
    from mnist_dist.tracking.console import LOG_WIDTH, whole_line_console

    console = whole_line_console()
    assert not console.is_terminal and console.width == LOG_WIDTH
    console.print("x" * 300)
    assert "x" * 300 in capsys.readouterr().out
