"""The layout of a run folder and its checkpoints/, read without torch or Accelerate (evaluate.py
--predict finds weights through here without loading Accelerate). checkpoint/writer.py writes the
checkpoints, checkpoint/reader.py loads them."""

from pathlib import Path

SEARCH_DEPTH = 3  # runs/<name>/checkpoints/<step>/model.safetensors: the run's files are 2 folders up
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


def nearest(weights_path: Path, name: str) -> Path | None:
    """`name` in the weights' folder or the closest folder above it (a checkpoint sits inside its run)."""
    folders = [weights_path.parent, *weights_path.parent.parents][:SEARCH_DEPTH]
    return next((folder / name for folder in folders if (folder / name).is_file()), None)
