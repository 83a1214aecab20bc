"""Chaos: random faults at random moments on one deterministic 2-process run, then the same command again.

    .venv/bin/python bench/chaos.py [--rounds 20] [--seed 0] [--out bench/results/chaos.json]

Each round starts the same torchrun command on the same run directory with one of FAULTS that the run
folder allows (what each expects: docs/RELIABILITY.md, "Chaos"):
- ENDINGS, a random 1-12 s after launch (start-up included): SIGKILL of one rank or of the job, SIGTERM
  to one rank, Ctrl-C, SIGSTOP of one rank (continued after 60 s if no collective times out on it);
- SIGTERM to every rank 0-3 s after they appear (a preemption in start-up);
- the newest checkpoint's state.json damaged (cut short, a lying step, null), then one of ENDINGS;
- checkpoints/ moved away or a dangling link (an unmounted scratch), put back after the job;
- a second job on the same run folder 1-9 s after the first, then one of ENDINGS for the one left.
Then the command runs once more to the end: the run survived if its final weights equal an
uninterrupted run's bit for bit and metrics.jsonl holds each logged step and epoch once, in order. A
fault that found no process able to take it (no worker yet, no stop-signal handler yet, the job over)
is reported, not counted. Prints "faults survived K/N": N counted faults, K of them that did what the
product promises, in a run that ended exact.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.chaos_jobs import NOT_COUNTED, Job, exit_code, inject, landing, outcome, wait_until  # noqa: E402
from bench.runs import machine, train_command, write_results  # noqa: E402
from mnist_dist.checkpoint.layout import complete_checkpoints  # noqa: E402

# Epochs of 282 steps (18,000 training digits, 2,000 held out for validation / 2 processes x 32), about
# 70 steps/s here. Start-up takes 3-14 s on 2 shared cores, so a round trains 0-9 s: two epochs per
# round keep the run going until the last fault.
ARGS = "--model lenet --dataset digits --batch-size 32 --lr 0.05 --deterministic --wandb disabled"
ARGS += " --checkpoint-every 25 --log-every 25 --collective-timeout 10"
ENDINGS = ("kill one rank", "kill the job", "SIGTERM one rank", "Ctrl-C", "SIGSTOP one rank")
FAULTS = (*ENDINGS, "SIGTERM at start-up", "damaged state.json", "checkpoints/ removed", "a second job")
# The complete checkpoints a fault needs: one to remove; an older one behind the newest, which is damaged
# (the only one damaged would leave the run folder refused, as it should: nothing to resume from).
NEEDS = {"damaged state.json": 2, "checkpoints/ removed": 1}
DAMAGES = {  # what a crash, a full disk or a hand edit leaves in state.json
    "cut short": lambda text: text[: len(text) // 2],
    "step 999999": lambda text: re.sub(r'"step": *\d+', '"step": 999999', text),
    "null": lambda text: "null",
}


class Bench:
    """The temporary folder of one chaos run: the run directory, and a log file per job started."""

    def __init__(self, folder: Path, data_dir: Path, epochs: int):
        self.folder, self.run_dir, self.jobs = folder, folder / "run", 0
        self.options = [*ARGS.split(), "--epochs", str(epochs), "--data-dir", str(data_dir)]

    def start(self, run_dir: Path | None = None) -> Job:
        self.jobs += 1
        command = train_command([*self.options, "--run-dir", str(run_dir or self.run_dir)], processes=2)
        return Job(command, self.folder / f"job-{self.jobs:02d}.log", f"{os.getpid()}-{self.jobs}")


def ended_by(fault: str, job: Job, delay: float) -> dict:
    """Inject `fault` after `delay` seconds and wait for the job's end. Expected: the job was interrupted."""
    time.sleep(delay)
    landed, stopped = inject(fault, job)
    code = exit_code(job, stopped)
    if code == 0:  # it came after the job's last step: nothing was interrupted
        landed = "the job finished anyway"
    return outcome(fault, landed, code, job, after_seconds=round(delay, 2), as_expected=code not in (0, None))


def snapshot(run_dir: Path) -> dict[str, str] | None:
    """Each file's SHA-256 and each link's target; None when there is no run folder. Not the lock: one left
    by a killed job is taken over and released by the next, which is no change to the run's record."""
    if not run_dir.exists():
        return None
    seen = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_symlink():
            seen[str(path.relative_to(run_dir))] = f"-> {os.readlink(path)}"
        elif path.is_file() and path.name != ".lock":
            seen[str(path.relative_to(run_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def startup_round(bench: Bench) -> list[dict]:
    """SIGTERM to every rank 0-3 s after they appear: exit 3; before the first step, the run folder unchanged
    (or still absent)."""
    before, job = snapshot(bench.run_dir), bench.start()
    wait_until(lambda: job.workers() or not job.running(), 60)
    delay = random.uniform(0, 3)
    time.sleep(delay)
    landed, _ = inject("SIGTERM at start-up", job)
    record = outcome("SIGTERM at start-up", landed, exit_code(job), job, after_seconds=round(delay, 2))
    record["unchanged"] = unchanged = snapshot(bench.run_dir) == before
    record["before_first_step"] = in_start_up = "during start-up, before the first step" in job.text()
    after_a_step = re.search(r"stopped by SIGTERM after step \d+", job.text()) is not None
    record["as_expected"] = 3 in record["worker_exits"] and (in_start_up and unchanged or after_a_step)
    return [record]


def damage_round(bench: Bench) -> list[dict]:
    """Damage the newest checkpoint's state.json (an older one is complete): skipped with a warning, the
    older one resumed. Left as it is: the job overwrites it when it reaches that step again."""
    *_, older, newest = complete_checkpoints(bench.run_dir / "checkpoints")
    how = random.choice(sorted(DAMAGES))
    state = newest / "state.json"
    state.write_text(DAMAGES[how](state.read_text()))
    job = bench.start()
    wait_until(lambda: "resumed from" in job.text() or not job.running(), 120)
    skipped = re.search(rf"warning: skipping checkpoint \S*{newest.name}:", job.text()) is not None
    resumed = re.search(rf"resumed from \S*{older.name} ", job.text()) is not None
    # The damage is there before the job starts: the job meets it in start-up, whatever happens next.
    facts = {"how": how, "skipped": skipped, "resumed_older": resumed, "as_expected": skipped and resumed}
    damage = outcome("damaged state.json", "start-up", None, job, **facts)
    return [damage, ended_by(random.choice(ENDINGS), job, random.uniform(0, 5))]


def removed_round(bench: Bench) -> list[dict]:
    """checkpoints/ gone (moved away, or a link to an unmounted folder): the job refuses with exit 2 and
    changes nothing; then checkpoints/ comes back, as a remount brings it."""
    folder, away = bench.run_dir / "checkpoints", bench.folder / "checkpoints-away"
    folder.rename(away)
    how = random.choice(("moved away", "a dangling link"))
    if how == "a dangling link":
        folder.symlink_to(bench.folder / "unmounted" / "checkpoints")
    before, job = snapshot(bench.run_dir), bench.start()
    record = outcome("checkpoints/ removed", "start-up", exit_code(job), job, how=how)
    record["unchanged"] = snapshot(bench.run_dir) == before
    record["made_checkpoints"] = folder.exists() and not folder.is_symlink()  # the job trained afresh
    folder.unlink() if folder.is_symlink() else shutil.rmtree(folder, ignore_errors=True)
    away.rename(folder)
    # Exit 2 from the ranks (torchrun's SIGTERM may reach one that is still leaving: -15), torchrun's 1.
    refused = "has trained before" in job.text() and 2 in record["worker_exits"]
    return [{**record, "as_expected": refused and record["unchanged"]}]


def second_job_round(bench: Bench) -> list[dict]:
    """A second job on the same run folder 1-9 s after the first: whichever comes second to the lock is
    refused (exit 2) naming the holder; the other trains on, undisturbed, until a fault of ENDINGS."""
    first = bench.start()
    delay = random.uniform(1, 9)
    time.sleep(delay)
    landed, second = landing("a second job", first, first.workers()), bench.start()
    wait_until(lambda: not first.running() or not second.running(), 180)
    refused, other = (first, second) if not first.running() else (second, first)
    which = "the first" if refused is first else "the second"
    record = outcome("a second job", landed, exit_code(refused, seconds=0), refused, after_seconds=round(delay, 2))
    said = 2 in record["worker_exits"] and "is in use by" in refused.text()
    record |= {"refused": which, "as_expected": said and other.running()}
    return [record, ended_by(random.choice(ENDINGS), other, random.uniform(0, 2))]


def a_round(bench: Bench) -> list[dict]:
    """A round with one of the faults that the run folder as it is allows (the checkpoints they need)."""
    checkpoints = len(complete_checkpoints(bench.run_dir / "checkpoints"))
    fault = random.choice([fault for fault in FAULTS if checkpoints >= NEEDS.get(fault, 0)])
    rounds = {"SIGTERM at start-up": startup_round, "damaged state.json": damage_round}
    rounds |= {"checkpoints/ removed": removed_round, "a second job": second_job_round}
    if fault in rounds:
        return rounds[fault](bench)
    return [ended_by(fault, bench.start(), random.uniform(1, 12))]  # start-up included


def exact(run_dir: Path, reference: Path) -> dict:
    """The final weights against the reference's, and each logged step and epoch once, in order."""
    ours, theirs = load_file(run_dir / "model.safetensors"), load_file(reference / "model.safetensors")
    same = ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    keys = [(row["type"], row["step"]) for row in rows]
    once = keys == [(row["type"], row["step"]) for row in expected]
    return {"same_weights": same, "each_row_once": once, "rows": len(rows)}


def tally(faults: list[dict]) -> dict:
    """Per fault kind: where each landed, how many were counted, and how many of those did as promised."""
    counted = [fault for fault in faults if fault["landed"] not in NOT_COUNTED]
    kinds = {kind: dict(Counter(f["landed"] for f in faults if f["fault"] == kind)) for kind in FAULTS}
    for kind, landed in kinds.items():
        landed["counted"] = sum(f["fault"] == kind for f in counted)
        landed["as_expected"] = sum(f["fault"] == kind and f["as_expected"] for f in counted)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (not of training)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default="bench/results/chaos.json")
    args = parser.parse_args()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(Path(folder), Path(args.data_dir).resolve(), epochs=2 * args.rounds)  # see ARGS
        reference = Path(folder) / "reference"
        assert exit_code(bench.start(reference), seconds=3600) == 0, "the uninterrupted run failed"
        faults = []
        for number in range(1, args.rounds + 1):
            for fault in a_round(bench):
                faults.append({"round": number, **fault})
                print(json.dumps(faults[-1]), flush=True)
        final = exit_code(bench.start(), seconds=3600)
        verdict = exact(bench.run_dir, reference) if final == 0 else {"same_weights": False, "each_row_once": False}
    counted = [fault for fault in faults if fault["landed"] not in NOT_COUNTED]
    ended_exact = final == 0 and verdict["same_weights"] and verdict["each_row_once"]
    survived = sum(fault["as_expected"] for fault in counted) if ended_exact else 0
    print(f"final run: exit {final}, {verdict}")
    print(f"faults survived {survived}/{len(counted)} ({len(faults) - len(counted)} not counted)")
    results = {"machine": machine(), "rounds": args.rounds, "seed": args.seed, "kinds": tally(faults)}
    results |= {"faults": faults, "final_exit_code": final, **verdict, "counted": len(counted), "survived": survived}
    write_results(results, args.out)


if __name__ == "__main__":
    main()
