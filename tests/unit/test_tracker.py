"""Tracker with W&B disabled: the rows of metrics.jsonl, a resumed run's rows, and a failed write kept
for the ranks to agree on (not raised)."""

import json
import os
from pathlib import Path

import pytest

from mnist_dist.atomic import WriteFailed
from mnist_dist.config import Config
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.tracking.wandb_session import wandb_names

NO_WANDB = Config(wandb="disabled")


def tracker(run_dir: Path | None, enabled: bool = True, **resume) -> Tracker:
    return Tracker(NO_WANDB, run_dir, enabled, facts={}, say=print, **resume)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_rows(run_dir: Path, steps: list[int]) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"type": "step", "step": s}) + "\n" for s in steps))


def test_every_logged_row_is_in_metrics_jsonl_in_order_and_flushed(tmp_path):
    logged = tracker(tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()  # a job that ends before training leaves none
    logged.log("step", 10, {"loss": 0.5, "lr": 0.1})
    assert rows(tmp_path) == [{"type": "step", "step": 10, "loss": 0.5, "lr": 0.1}]  # before close: flushed
    logged.log("epoch", 20, {"val_accuracy": 0.9, "train_samples": 640, "epoch_seconds": 2.0})
    logged.close()
    assert [(row["type"], row["step"]) for row in rows(tmp_path)] == [("step", 10), ("epoch", 20)]
    assert rows(tmp_path)[1]["val_accuracy"] == 0.9
    assert logged.failure is None and logged.wandb is None


def test_other_ranks_and_dry_runs_write_no_file(tmp_path):
    for quiet in (tracker(tmp_path, enabled=False), tracker(None)):
        quiet.log("step", 1, {"loss": 1.0})
        quiet.close()
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_drops_the_rows_after_its_step_and_a_line_cut_short(tmp_path):
    write_rows(tmp_path, [10, 20, 30, 40])
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"type": "step", "st')  # a crash in the middle of a row
    resumed = tracker(tmp_path, resumed_run_id="abc123", start_step=20)
    assert [row["step"] for row in rows(tmp_path)] == [10, 20]
    resumed.log("step", 30, {"loss": 0.1})
    resumed.close()
    assert [row["step"] for row in rows(tmp_path)] == [10, 20, 30]  # one row per step, in order
    assert resumed.run_id == "abc123"  # kept for the checkpoints while W&B is off


def test_a_resume_on_another_number_of_processes_is_one_row_and_a_wandb_chart(tmp_path):
    """Resumed at step 20 from 2 processes to 1, killed before its next checkpoint, resumed from step 20 again:
    the world_size row of step 20 is written anew, never twice; W&B charts the processes over the steps."""
    write_rows(tmp_path, [10, 20])
    for _ in range(2):
        resumed = tracker(tmp_path, start_step=20)
        resumed.log("world_size", 20, {"from": 2, "to": 1})
        resumed.log("step", 30, {"loss": 0.1})
        resumed.close()
    assert [(row["type"], row["step"]) for row in rows(tmp_path)] == [
        ("step", 10),
        ("step", 20),
        ("world_size", 20),
        ("step", 30),
    ]
    assert wandb_names("world_size", {"from": 2, "to": 1}) == {"system/world_size": 1}


def test_a_run_that_starts_over_drops_every_row(tmp_path):
    write_rows(tmp_path, [10, 20])
    tracker(tmp_path).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill a disk")
def test_a_failed_write_becomes_the_failure_and_nothing_more_is_written(tmp_path):
    full = tracker(tmp_path)
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write: No space left on device
    full.log("step", 10, {"loss": 0.5})  # does not raise: the ranks agree to stop first
    assert isinstance(full.failure, WriteFailed)
    assert str(full.failure).startswith(f"cannot write {tmp_path / 'metrics.jsonl'} (No space left on device)")
    failure = full.failure
    full.log("step", 20, {"loss": 0.4})  # written nowhere, and the first failure is kept
    full.close()
    assert full.failure is failure


def test_a_failed_rewrite_on_resume_becomes_the_failure_and_leaves_the_rows(tmp_path):
    write_rows(tmp_path, [10, 20, 30])
    before = (tmp_path / "metrics.jsonl").read_bytes()
    (tmp_path / "metrics.jsonl.tmp").mkdir()  # the temporary beside it cannot be written
    resumed = tracker(tmp_path, start_step=20)
    assert isinstance(resumed.failure, WriteFailed) and "metrics.jsonl" in str(resumed.failure)
    resumed.log("step", 30, {"loss": 0.1})
    resumed.close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
