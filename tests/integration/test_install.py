"""The installed package: `pip install -e` into a fresh virtualenv, then the commands run from another
folder, as a user of the package runs them. Offline, and nothing is written into the checkout."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO, summary

# The checkout's own outputs and environments, left out of the copy that is installed.
NOT_COPIED = {".git", ".venv", "data", "runs", "wandb", "build", ".pytest_cache", ".ruff_cache"}
# The test environment's packages (torch, accelerate, pip, setuptools), not the checkout: the install
# must bring mnist_dist itself. No W&B key: a run must not go online.
ENVIRONMENT = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "WANDB_API_KEY")}
ENVIRONMENT |= {"OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1", "PIP_CONFIG_FILE": os.devnull}


def run(command: list, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=ENVIRONMENT, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        pytest.fail(f"{command} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def copy_checkout(destination: Path) -> Path:
    """The checkout's files without its outputs: the install may write build files beside them."""

    def left_out(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == REPO
        return [
            name for name in names if name == "__pycache__" or name.endswith(".egg-info") or top and name in NOT_COPIED
        ]

    shutil.copytree(REPO, destination, ignore=left_out)
    return destination


def new_virtualenv(folder: Path) -> Path:
    """A virtualenv that sees the test environment's packages through a .pth file; its python."""
    # --without-pip: pip and setuptools come from the test environment too. The setuptools a venv ships
    # (65.5 with Python 3.11) needs the `wheel` package to build any wheel, and that would be a download.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site_packages = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], folder)
    ours = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    (Path(site_packages.stdout.strip()) / "test-environment.pth").write_text("\n".join(ours) + "\n")
    version = run([python, "-c", "import setuptools; print(setuptools.__version__)"], folder).stdout.strip()
    if tuple(int(part) for part in version.split(".")[:2]) < (77, 0):  # 70.1: no `wheel`; 77: license = "MIT"
        pytest.fail(
            f"setuptools {version} cannot build offline; requirements-test.txt asks for 77+: run scripts/setup.sh"
        )
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """mnist-dist installed (editable) from a copy of this checkout into a fresh virtualenv, and an empty
    working folder elsewhere."""
    root = tmp_path_factory.mktemp("install")
    source = copy_checkout(root / "source")
    python = new_virtualenv(root / "venv")
    run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", source], root)
    (root / "work").mkdir()
    return {"source": source, "bin": python.parent, "work": root / "work"}


def test_the_package_imports_from_any_folder_and_holds_mnist_dist_only(installed):
    python, work = installed["bin"] / "python", installed["work"]
    imported = run([python, "-c", "import mnist_dist, mnist_dist.data.digits; print(mnist_dist.__file__)"], work)
    assert Path(imported.stdout.strip()) == installed["source"] / "mnist_dist" / "__init__.py"
    # The checkout's scripts and folders are not part of the package (another distribution may have its own).
    found = "import importlib.util as u; print([u.find_spec(m) and u.find_spec(m).origin for m in ('train', 'bench')])"
    assert str(installed["source"]) not in run([python, "-c", found], work).stdout


def test_mnist_dist_train_writes_its_data_and_run_under_the_working_folder(installed):
    work = installed["work"]
    args = ["--model", "linear", "--epochs", "1", "--max-steps", "2", "--run-name", "installed", "--wandb", "disabled"]
    result = run([installed["bin"] / "mnist-dist-train", *args], work)
    assert "optimizer steps" in result.stdout
    run_dir = work / "runs" / "installed"  # the defaults, runs/ and ./data, are relative to where it runs
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "checkpoints" / "latest").is_file()
    assert list((work / "data" / "digits").iterdir())
    assert summary(run_dir)["world_size"] == 1
    assert "git_commit" not in summary(run_dir)  # no git tracks the installed copy


def test_mnist_dist_evaluate_answers_help_and_errors_name_the_command(installed):
    bin_dir, work = installed["bin"], installed["work"]
    assert run([bin_dir / "mnist-dist-evaluate", "--help"], work).stdout.startswith("usage: mnist-dist-evaluate")
    assert "\ndata:\n" in run([bin_dir / "mnist-dist-train", "--help"], work).stdout
    refused = run([bin_dir / "mnist-dist-train", "--epoch", "1"], work, check=False)
    assert refused.returncode == 2
    assert (
        refused.stderr.strip() == "error: unknown argument --epoch. Did you mean --epochs? See mnist-dist-train --help."
    )
