"""Shared helpers: run train.py for real (one process, torchrun or accelerate launch) in a subprocess,
and read back what a run wrote (summary.json, metrics.jsonl, model.safetensors, error lines)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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
        return [
            str(BIN / "torchrun"),
            "--nnodes",
            "1",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            script,
        ]
    if launcher == "accelerate":
        return [
            str(BIN / "accelerate"),
            "launch",
            "--config_file",
            str(REPO / "launch/accelerate/cpu.yaml"),
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(free_port()),
            script,
        ]
    raise ValueError(launcher)


def run_script(
    script: str,
    args: list[str],
    processes: int = 1,
    launcher: str | None = None,
    env: dict | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    launcher = launcher or ("python" if processes == 1 else "torchrun")
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1" if processes > 1 else "2",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    environment.pop("WANDB_API_KEY", None)
    command = launch_command(script, processes, launcher) + [str(arg) for arg in args]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the whole session, so the digits cache is generated once."""
    return tmp_path_factory.mktemp("data")


def train_into(
    run_dir,
    data_dir,
    *args,
    processes: int = 1,
    launcher: str | None = None,
    check: bool = True,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run train.py into run_dir. Fails the test with the output on a non-zero exit, unless check=False."""
    full = ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", *args]
    result = run_script("train.py", full, processes, launcher, env)
    if check and result.returncode != 0:
        pytest.fail(f"train.py exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def train(data_dir, tmp_path):
    """Run train.py; returns (completed process, run dir). Fails the test with the output on a non-zero exit."""

    def run(*args, processes: int = 1, launcher: str | None = None, check: bool = True, env: dict | None = None):
        run_dir = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        return train_into(
            run_dir, data_dir, *args, processes=processes, launcher=launcher, check=check, env=env
        ), run_dir

    return run


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def metrics_rows(run_dir: Path) -> list[dict]:
    """Every row of metrics.jsonl, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path, message: str | None = None) -> None:
    """The same tensor names and bit-identical tensors in both runs' model.safetensors. On a difference
    the assertion says `message`, or by default the name of the first tensor that differs."""
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name if message is None else message


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, no traceback, and exactly one `error: ` line holding every fragment."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
