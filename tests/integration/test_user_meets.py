"""What a user meets at the shell, with real processes: a reader that leaves the pipe early
(`python train.py | head -3`) costs neither command its work.

The pipe's reading end is closed before the command starts, so that its first line already meets a
gone reader: the case of `| head` at its most abrupt, with no race over when head exits.
"""

import os
import subprocess

from helpers import LENET_FIVE_STEPS, REPO, script_command, script_environment, summary

DROPPED = "note: stdout's reader has gone"


def run_into_a_closed_pipe(script: str, args: list) -> subprocess.CompletedProcess:
    """`script` with `args`, its stdout a pipe nobody reads (closed at once); stderr captured as text."""
    reading, writing = os.pipe()
    os.close(reading)
    try:
        command = script_command(script, args, 1, None)
        return subprocess.run(
            command, cwd=REPO, env=script_environment(), stdout=writing, stderr=subprocess.PIPE, text=True, timeout=300
        )
    finally:
        os.close(writing)


def test_training_goes_on_and_writes_its_files_when_stdout_is_closed(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--data-dir", data_dir, "--run-dir", run_dir, "--wandb", "disabled", *LENET_FIVE_STEPS]
    result = run_into_a_closed_pipe("train.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run_dir)["steps"] == 5
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "checkpoints" / "step-000005").is_dir()
    assert result.stderr.count(DROPPED) == 1 and "Traceback" not in result.stderr and "error:" not in result.stderr


def test_an_evaluation_writes_its_report_when_stdout_is_closed(lenet_five_steps, data_dir, tmp_path):
    out = tmp_path / "report"  # evaluate.py only reads the shared run
    result = run_into_a_closed_pipe(
        "evaluate.py", ["--checkpoint", lenet_five_steps, "--data-dir", data_dir, "--out", out]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
    assert result.stderr.count(DROPPED) == 1 and "Traceback" not in result.stderr
