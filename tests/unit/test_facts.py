"""System facts: a git commit only for code that git tracks, never another project's."""

import shutil
import subprocess
from pathlib import Path

import pytest

from mnist_dist.tracking.facts import git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True, capture_output=True
    )


def test_an_untracked_package_inside_another_repository_names_no_commit(tmp_path):
    package = tmp_path / ".venv" / "site-packages" / "mnist_dist"  # installed into a venv in another project
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    git(tmp_path, "init", "-q")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "another project")
    assert git_state(package) == {}


def test_a_tracked_package_names_its_commit_and_whether_it_was_changed(tmp_path):
    package = tmp_path / "mnist_dist"
    package.mkdir()
    (package / "__init__.py").write_text("")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "the package")
    state = git_state(package)
    assert len(state["git_commit"]) == 40 and state["git_dirty"] is False
    (package / "__init__.py").write_text("changed = True\n")
    assert git_state(package)["git_dirty"] is True


def test_a_package_outside_any_repository_names_no_commit(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    assert git_state(tmp_path) == {}
