"""Chaos: random faults at random moments on one deterministic 2-process run, then the same command again.

    .venv/bin/python bench/chaos.py [--rounds 20] [--seed 0] [--out bench/results/chaos.json]

Each round starts the same torchrun command on the same run directory, waits a random 1-9 s (start-up
included, so some faults land before training), and injects one fault: SIGKILL of one rank, SIGKILL
of the whole job, SIGTERM to one rank, Ctrl-C (SIGINT to torchrun and its workers, as a terminal
sends it), or SIGSTOP of one rank (the others give up after --collective-timeout; a stopped process that no
collective waits on is continued after 60 s, as an operator would). Then the command
runs once more to the end. The run survived if its final weights equal an uninterrupted run's bit for
bit and metrics.jsonl holds each logged step and each epoch exactly once, in order. Prints
"faults survived K/N": N faults that interrupted the job (exit code not 0), K of them in a run that
ended exact (all or none here, as all faults hit the one run).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import REPO, machine, train_command, write_results  # noqa: E402

# Epochs of 282 steps (18,000 training digits, 2,000 held out for validation / 2 processes x 32).
# A round trains for a few seconds, 200-450 steps here, so two epochs per round keep the run
# going until the last fault (one per round was used up by round 16 of 20).
ARGS = "--model lenet --dataset digits --batch-size 32 --lr 0.05 --deterministic --wandb disabled"
ARGS += " --checkpoint-every 25 --log-every 25 --collective-timeout 10"
FAULTS = ("kill one rank", "kill the job", "SIGTERM one rank", "Ctrl-C", "SIGSTOP one rank")


def start(run_dir: Path, data_dir: Path, epochs: int, log) -> subprocess.Popen:
    options = [*ARGS.split(), "--epochs", str(epochs), "--data-dir", str(data_dir), "--run-dir", str(run_dir)]
    command = train_command(options, processes=2)
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})


def workers(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(process.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


def inject(fault: str, process: subprocess.Popen) -> psutil.Process | None:
    """Send `fault` to the running job; returns a stopped process to continue later, if any."""
    ranks = workers(process)
    if not ranks:
        return None  # not started yet, or already over: the fault is the round's start and stop
    target = random.choice(ranks)
    if fault == "kill one rank":
        target.kill()
    elif fault == "kill the job":
        for rank in ranks:
            rank.kill()
        process.kill()
    elif fault == "SIGTERM one rank":
        target.send_signal(signal.SIGTERM)
    elif fault == "Ctrl-C":
        for pid in (process.pid, *(rank.pid for rank in ranks)):
            psutil.Process(pid).send_signal(signal.SIGINT)
    else:
        target.suspend()
        return target
    return None


def round_of_chaos(fault: str, run_dir: Path, data_dir: Path, epochs: int, log) -> dict:
    process = start(run_dir, data_dir, epochs, log)
    delay = random.uniform(1, 9)
    time.sleep(delay)
    finished_before = process.poll() is not None
    stopped = None if finished_before else inject(fault, process)
    try:
        code = process.wait(timeout=60 if stopped is not None else 180)
    except subprocess.TimeoutExpired:
        if stopped is None:
            raise
        # No collective waits on it (the others had finished, or had left after the timeout): a
        # stopped process never ends by itself, so continue it, as an operator would.
        stopped.resume()
        code = process.wait(timeout=180)
    finally:
        if stopped is not None and stopped.is_running():
            stopped.resume()
    for rank in workers(process):  # nothing of this round may outlive it
        rank.kill()
    return {"fault": fault, "after_seconds": round(delay, 2), "exit_code": code, "ran_out": finished_before}


def exact(run_dir: Path, reference: Path) -> dict:
    """The final weights against the reference's, and each logged step and epoch once, in order."""
    ours, theirs = load_file(run_dir / "model.safetensors"), load_file(reference / "model.safetensors")
    same = ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    keys = [(row["type"], row["step"]) for row in rows]
    once = keys == [(row["type"], row["step"]) for row in expected]
    return {"same_weights": same, "each_row_once": once, "rows": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (not of training)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/chaos.json")
    args = parser.parse_args()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory() as folder, (Path(folder) / "log").open("w") as log:
        reference, run_dir = Path(folder) / "reference", Path(folder) / "run"
        epochs = 2 * args.rounds  # see ARGS
        assert start(reference, Path(args.data_dir), epochs, log).wait() == 0, "the uninterrupted run failed"
        rounds = []
        for number in range(1, args.rounds + 1):
            rounds.append(round_of_chaos(random.choice(FAULTS), run_dir, Path(args.data_dir), epochs, log))
            print(f"round {number:2d}: {rounds[-1]}", flush=True)
        final = start(run_dir, Path(args.data_dir), epochs, log).wait()
        verdict = exact(run_dir, reference) if final == 0 else {"same_weights": False, "each_row_once": False}
    # A fault counts when it interrupted the job; one that landed too early or too late to matter does not.
    injected = sum(not row["ran_out"] and row["exit_code"] != 0 for row in rounds)
    survived = injected if final == 0 and verdict["same_weights"] and verdict["each_row_once"] else 0
    print(f"final run: exit {final}, {verdict}")
    print(f"faults survived {survived}/{injected}")
    results = {"machine": machine(), "rounds": rounds, "final_exit_code": final, **verdict}
    write_results({**results, "faults": injected, "survived": survived}, args.out)


if __name__ == "__main__":
    main()
