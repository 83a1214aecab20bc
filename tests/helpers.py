"""Helpers for the tests: run train.py for real (one process, torchrun or accelerate launch) in a subprocess,
in the foreground or in the background, and read back what a run wrote (summary.json, metrics.jsonl,
model.safetensors, error lines).

Test modules import them by name (`from helpers import run_script`): pytest.ini puts tests/ on sys.path.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# The short finished run of the `lenet_five_steps` fixture (tests/integration/conftest.py), shared by
# the tests that only need one: lenet's recipe (a constant lr, so --schedule none changes nothing).
LENET_FIVE_STEPS = ["--model", "lenet", "--max-steps", "5", "--schedule", "none"]


# The run of the `offline_short_run` fixture (tests/integration/conftest.py): linear on digits, 3 steps,
# W&B offline (its files in the run dir).
OFFLINE_SHORT = ["--model", "linear", "--dataset", "digits", "--max-steps", "3", "--batch-size", "500"]
OFFLINE_SHORT += ["--wandb", "offline"]


def skip_unless_required(reason: str, variable: str) -> None:
    """Skip with `reason`, unless CI asked for the test by setting `variable` to 1 (.ci/run sets
    MNIST_DIST_REQUIRE_FASHION, _SLURM and _TMPFS): then fail, so that CI never passes by skipping."""
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} ({variable}=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deterministic_args(max_steps: int, *extra: str) -> list[str]:
    """train.py options for a short run whose weights can be compared bit for bit with another's: lenet on
    digits, batch 32, lr 0.05, one epoch cut at max_steps, --deterministic; then `extra`."""
    return [
        "--model",
        "lenet",
        "--dataset",
        "digits",
        "--batch-size",
        "32",
        "--max-steps",
        str(max_steps),
        "--epochs",
        "1",
        "--deterministic",
        "--lr",
        "0.05",
        *extra,
    ]


def launch_command(script: str, processes: int, launcher: str, rendezvous: list[str] | None = None) -> list[str]:
    """The command that starts `script` on `processes` processes. For torchrun, `rendezvous` replaces the
    default options (one node, a free port on 127.0.0.1): e.g. ["--standalone"], or a node of several."""
    if rendezvous is not None and launcher != "torchrun":
        raise ValueError(f"rendezvous options are for torchrun, not {launcher}")
    if launcher == "python":
        assert processes == 1
        return [sys.executable, script]
    if launcher == "torchrun":
        if rendezvous is None:
            rendezvous = ["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        return [str(BIN / "torchrun"), *rendezvous, "--nproc_per_node", str(processes), script]
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


def script_environment(env: dict | None = None) -> dict:
    """This environment, with the repository importable, unbuffered output, 1 thread a process, and no W&B
    API key; then `env` (which cannot bring the key back).

    1 thread even for a process alone: the suite's two xdist workers share the 2 cores, and a run of 2
    threads beside another worker's runs oversubscribes them (its OpenMP threads spin while they wait):
    the one-epoch model runs of test_model_selection.py took 86-91 s with 2 threads, 56 s with 1."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    environment.pop("WANDB_API_KEY", None)
    return environment


def script_command(
    script: str, args: list, processes: int, launcher: str | None, rendezvous: list[str] | None = None
) -> list[str]:
    """launch_command with the script's arguments. The launcher defaults to python for 1 process and no
    rendezvous options, else torchrun."""
    launcher = launcher or ("python" if processes == 1 and rendezvous is None else "torchrun")
    return launch_command(script, processes, launcher, rendezvous) + [str(arg) for arg in args]


def run_script(
    script: str,
    args: list,
    processes: int = 1,
    launcher: str | None = None,
    env: dict | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run `script` from the repository root to its end; stdout and stderr captured as text."""
    command = script_command(script, args, processes, launcher)
    environment = script_environment(env)
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


def start_script(
    script: str,
    args: list,
    processes: int = 1,
    env: dict | None = None,
    rendezvous: list[str] | None = None,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen:
    """run_script in the background, for a test that acts on the run while it trains: python for 1 process,
    torchrun for several or with `rendezvous` options. stdout is a text pipe; stderr too, or pass
    stderr=subprocess.STDOUT to read both from stdout."""
    command = script_command(script, args, processes, None, rendezvous)
    environment = script_environment(env)
    return subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until `path` exists; fails if `process` (a background run) ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


def workers(process: subprocess.Popen) -> list[psutil.Process]:
    """The training processes of a background run: the launcher itself for 1 process, torchrun's children
    otherwise. A child that still shows the launcher's own command line is a fork that has not yet become a
    worker (subprocess.Popen between fork and exec): not one of them."""
    launcher = psutil.Process(process.pid)
    children = [
        child
        for child in launcher.children(recursive=True)
        if "train.py" in " ".join(child.cmdline()) and child.cmdline() != launcher.cmdline()
    ]
    return children or [launcher]


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


def made_once(tmp_path_factory, make: Callable[[Path, int], object]) -> Callable[[int], Path]:
    """For a module- or session-scoped fixture of trained runs that tests share: the returned function
    gives the run dir of `make(run_dir, processes)`, made the first time a test asks for that number of
    processes (so a test run with -k makes only what it needs). A test that changes the run copies it."""
    runs: dict[int, Path] = {}

    def run_dir_of(processes: int) -> Path:
        if processes not in runs:
            run_dir = tmp_path_factory.mktemp(f"shared-{processes}-processes") / "run"
            make(run_dir, processes)
            runs[processes] = run_dir
        return runs[processes]

    return run_dir_of


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


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str, processes: int = 1) -> None:
    """Exit 2, no traceback, and exactly one `error: ` line holding every fragment.

    With several processes (torchrun): the workers exited 2, which torchrun reports and turns into its
    own exit 1 and traceback (README, "Exit codes"); a worker still leaving when the first one had
    exited may be ended by torchrun's SIGTERM (-15) instead. None of the workers printed a traceback.
    """
    if processes == 1:
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    else:
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
        codes = re.findall(r"exitcode  : (-?\d+)", result.stderr)
        assert len(codes) == processes and "2" in codes and set(codes) <= {"2", "-15"}, result.stderr[-3000:]
        frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith('File "')]
        assert not [line for line in frames if "mnist_dist" in line or "train.py" in line], result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
