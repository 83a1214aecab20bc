"""pyproject.toml: the package holds mnist_dist and its subpackages only, its dependencies are
requirements.txt's, and its commands are the functions train.py and evaluate.py call."""

import importlib

import pytest
from helpers import REPO
from setuptools import find_packages

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; on 3.10 test_install.py still builds the package
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_lines(name: str) -> set[str]:
    """The requirements of a requirements file, comments and `-r` includes left out."""
    lines = (line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines())
    return {line for line in lines if line and not line.startswith("-")}


def test_the_package_is_mnist_dist_and_every_subpackage_only():
    found = set(find_packages(REPO, **PROJECT["tool"]["setuptools"]["packages"]["find"]))
    folders = {path.parent for path in (REPO / "mnist_dist").rglob("*.py")}
    # A folder of code without __init__.py would be left out of the wheel; every one must be a package.
    assert found == {".".join(folder.relative_to(REPO).parts) for folder in folders}
    assert "mnist_dist.data" in found


def test_dependencies_are_the_ranges_of_the_requirements_files():
    project = PROJECT["project"]
    extras = project["optional-dependencies"]
    assert set(project["dependencies"]) | set(extras["wandb"]) == requirement_lines("requirements.txt")
    assert set(extras["test"]) - {"mnist-dist[wandb]"} == requirement_lines("requirements-test.txt")


@pytest.mark.parametrize("command, script", [("mnist-dist-train", "train.py"), ("mnist-dist-evaluate", "evaluate.py")])
def test_each_command_runs_the_function_its_script_calls(command, script):
    module, function = PROJECT["project"]["scripts"][command].split(":")
    entry = getattr(importlib.import_module(module), function)
    assert f"from {module} import {function} as main" in (REPO / script).read_text()
    assert callable(entry)
