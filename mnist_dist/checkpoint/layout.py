"""The layout of a run folder and its checkpoints/, read without torch or Accelerate (evaluate.py
--predict finds weights through here without loading Accelerate). checkpoint/writer.py writes the
checkpoints, checkpoint/reader.py loads them."""

import re
from pathlib import Path

SEARCH_DEPTH = 3  # runs/<name>/checkpoints/<step>/model.safetensors: the run's files are 2 folders up
COMPLETE = "COMPLETE"  # written last into a checkpoint folder; a folder without it is ignored
# The files a run writes at its end (train/final.py), which only a run that trained to its end has.
FINAL_FILES = ("model.safetensors", "last.safetensors", "summary.json")
# A checkpoint folder's name; anything else in checkpoints/ (`step-000280-copy`, a user's backup) is not one.
CHECKPOINT_NAME = re.compile(r"step-(\d{6,})")


def complete_checkpoints(folder: Path | None) -> list[Path]:
    """The complete checkpoints in a run's checkpoints/ folder, oldest first."""
    if folder is None or not folder.is_dir():
        return []
    named = (path for path in folder.glob("step-*") if CHECKPOINT_NAME.fullmatch(path.name))
    return sorted((path for path in named if (path / COMPLETE).is_file()), key=step_of)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    complete = complete_checkpoints(run_dir / "checkpoints")
    return complete[-1] if complete else None


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder's name gives (`step-000120` -> 120), or None for another name."""
    match = CHECKPOINT_NAME.fullmatch(path.name)
    return int(match[1]) if match else None


def nearest(weights_path: Path, name: str) -> Path | None:
    """`name` in the weights' folder or the closest folder above it (a checkpoint sits inside its run)."""
    folders = [weights_path.parent, *weights_path.parent.parents][:SEARCH_DEPTH]
    return next((folder / name for folder in folders if (folder / name).is_file()), None)
