"""The facts of a run that no option sets: the machine, the library versions and the commit of the code.

They go into the config table on the console, summary.json and the W&B run page, so that any of
them says what produced its numbers.
"""

import platform
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

GIT_TIMEOUT = 10  # seconds per git command: a hung file system must not hold up training
PACKAGE_DIR = Path(__file__).resolve().parent


def git_state(package_dir: Path = PACKAGE_DIR) -> dict[str, Any]:
    """The commit of this code and whether it had uncommitted changes; nothing when git does not track it.

    An installed copy says nothing: outside any repository git fails, and inside one (a virtualenv in
    another project's folder) the package's files are not tracked, so that project's commit is not ours.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=True
        ).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # fails unless this checkout tracks the package
        return {
            "git_commit": git("rev-parse", "HEAD"),
            # Tracked files only: a run directory or a dataset inside the checkout is not a code change.
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, ValueError, subprocess.SubprocessError):  # no git, not a checkout, or not tracked there
        return {}


def system_facts(accelerator: Accelerator) -> dict[str, Any]:
    """Device, world size, precision, versions, and git_commit/git_dirty when the code is a git checkout."""
    return {
        # "cpu", never "cpu:0" (which some launchers give): the same machine reads the same
        "device": accelerator.device.type if accelerator.device.type != "cuda" else str(accelerator.device),
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "torch_version": torch.__version__,
        "torchvision_version": version("torchvision"),  # without importing it (about 1 s)
        "accelerate_version": version("accelerate"),
        "python_version": platform.python_version(),
        **(git_state() if accelerator.is_main_process else {}),  # the process that reports them asks git
    }
