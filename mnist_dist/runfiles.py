"""Files of a run folder that several modules read or write, with no torch or accelerate import
(evaluate.py --predict finds weights through here without loading Accelerate)."""

import os
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


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
