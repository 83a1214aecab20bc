"""pyproject.toml: the package holds mnist_dist and its subpackages only, its dependencies are
requirements.txt's, and its commands are the functions train.py and evaluate.py call; the license
(MIT) and CITATION.cff's version; scripts/setup.sh installs the package itself, offline, once."""

import importlib
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers import REPO
from setuptools import find_packages

import mnist_dist

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


def test_the_license_is_mit_in_pyproject_and_in_the_license_file():
    assert PROJECT["project"]["license"] == "MIT" and PROJECT["project"]["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the mnist-dist authors" in text


def test_the_citation_file_cites_this_version_under_the_mit_license():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["version"] == mnist_dist.__version__  # bump the two together
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert citation["authors"] == [{"name": "The mnist-dist authors"}] and citation["title"]


def test_setup_installs_the_requirements_then_the_package_editable_offline_once(tmp_path):
    """scripts/setup.sh in a copy whose .venv/bin/python only records what it is asked to run."""
    for name in ("scripts/setup.sh", "requirements.txt", "requirements-test.txt", "constraints.txt", "pyproject.toml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".venv/bin").mkdir(parents=True)
    fake = tmp_path / ".venv/bin/python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    fake.chmod(0o755)

    def setup() -> list[str]:
        (tmp_path / "calls").write_text("")
        subprocess.run(
            ["bash", "scripts/setup.sh"], cwd=tmp_path, env={**os.environ, "PYTHON": sys.executable}, check=True
        )
        return [call for call in (tmp_path / "calls").read_text().splitlines() if call != "-m pip --version"]

    first = setup()
    assert len(first) == 2 and "-r requirements-test.txt -c constraints.txt" in first[0]
    assert first[1].endswith("--no-deps --no-build-isolation --no-index -e .")  # no download: setuptools is there
    assert setup() == []  # the stamp: nothing to do the second time
