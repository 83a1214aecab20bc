"""Shared helpers: run train.py for real (one process, torchrun or accelerate launch) in a subprocess."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(script: str, processes: int, launcher: str) -> list[str]:
    if launcher == "python":
        assert processes == 1
        return [sys.executable, script]
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nnodes", "1", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script]  # fmt: skip
    if launcher == "accelerate":
        return [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "launch/accelerate/cpu.yaml"),
                "--num_processes", str(processes), "--main_process_port", str(free_port()), script]  # fmt: skip
    raise ValueError(launcher)


def run_script(script: str, args: list[str], processes: int = 1, launcher: str | None = None, env: dict | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    launcher = launcher or ("python" if processes == 1 else "torchrun")
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1" if processes > 1 else "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("WANDB_API_KEY", None)
    command = launch_command(script, processes, launcher) + [str(arg) for arg in args]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the whole session, so the digits cache is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def train(data_dir, tmp_path):
    """Run train.py; returns (completed process, run dir). Fails the test with the output on a non-zero exit."""

    def run(*args, processes: int = 1, launcher: str | None = None, check: bool = True, env: dict | None = None):
        run_dir = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        full = ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", *args]
        result = run_script("train.py", full, processes, launcher, env)
        if check and result.returncode != 0:
            pytest.fail(f"train.py exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result, run_dir

    return run
