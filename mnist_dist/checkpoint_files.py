"""The layout of a run's checkpoints/ folder, read without torch or Accelerate (evaluate.py --predict
finds weights through here without loading Accelerate). checkpoint.py writes and loads them."""

from pathlib import Path

COMPLETE = "COMPLETE"  # written last into a checkpoint folder; a folder without it is ignored


def complete_checkpoints(folder: Path | None) -> list[Path]:
    """The complete checkpoints in a run's checkpoints/ folder, oldest first."""
    if folder is None or not folder.is_dir():
        return []
    return sorted((path for path in folder.glob("step-*") if (path / COMPLETE).is_file()), key=step_of)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    complete = complete_checkpoints(run_dir / "checkpoints")
    return complete[-1] if complete else None


def step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])
