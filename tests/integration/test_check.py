"""`python -m mnist_dist.check` under real launchers: 2 gloo processes (torchrun), 2 "nodes" x 2 processes
(two torchruns, as test_multinode.py), wrong launches that it must catch with exit 1 and one line, and
launch/slurm/check.sbatch on the real one-node SLURM cluster (the `cluster` fixture).

Each process starts for about 3 s and the check then runs about 5 s (a 2 s window times the steps), so
the runs are few and the all-reduce sizes small.
"""

import json
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, error_lines, free_port, run_script, script_command, script_environment, start_script

from mnist_dist.check.equivalence import equivalence_row
from mnist_dist.check.launch import launch_problem
from mnist_dist.check.shards import shard_problem
from mnist_dist.config import make_config

CHECK = ["-m", "mnist_dist.check"]  # the "script" of the launch helpers: python -m / torchrun -m
SIZES = ["--sizes", "4K,1M"]


def check_args(data_dir: Path, *extra) -> list:
    return [*CHECK[1:], "--data-dir", data_dir, *SIZES, *extra]


def rows_of(report: dict, check: str) -> list[dict]:
    return [row for row in report["rows"] if row["check"] == check]


def assert_every_check_held(report: dict, processes: int) -> None:
    assert report["ok"] and report["failed"] is None and report["processes"] == processes
    assert [row["values"]["rank"] for row in rows_of(report, "launch")] == list(range(processes))
    assert all(row["values"]["group"] == row["values"]["launched"] == processes for row in rows_of(report, "launch"))
    assert [row["values"]["bytes"] for row in rows_of(report, "all-reduce")] == [4096, 1 << 20]
    assert all("sums exact on every rank" in row["result"] for row in rows_of(report, "all-reduce"))
    (shards,) = rows_of(report, "shards")
    assert len(shards["values"]["per_rank"]) == processes and len(set(shards["values"]["sha256"])) == 1
    (equivalence,) = rows_of(report, "equivalence")
    assert equivalence["values"]["steps"] == 3 and equivalence["values"]["share"] <= equivalence["values"]["limit"]
    assert len(rows_of(report, "step time")) == processes
    assert all(row["ok"] for row in report["rows"])


def test_two_gloo_processes_pass_every_check_and_write_the_table_as_json(data_dir, tmp_path):
    # --standalone: torchrun takes a free port as it binds it (test_distributed.py, run_probe)
    args = [*check_args(data_dir), "--json", tmp_path / "check.json"]
    command = script_command(CHECK[0], args, 2, "torchrun", rendezvous=["--standalone"])
    result = subprocess.run(command, cwd=REPO, env=script_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mnist-dist launch check: 2 processes" in result.stdout and not error_lines(result.stderr)
    assert result.stdout.count("WORLD_SIZE=2, group of 2") == 2  # one table, printed by rank 0 alone
    assert_every_check_held(json.loads((tmp_path / "check.json").read_text()), 2)


def test_two_nodes_of_two_processes_form_one_group_of_four(data_dir, tmp_path):
    port, report = free_port(), tmp_path / "check.json"
    nodes = [
        start_script(
            CHECK[0],
            check_args(data_dir, "--json", report, "--expect-processes", "4"),
            2,
            rendezvous=[
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
            ],
            stderr=subprocess.STDOUT,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "mnist-dist launch check: 4 processes" in outputs[0]  # rank 0 runs on node 0
    found = json.loads(report.read_text())
    assert_every_check_held(found, 4)
    assert [row["values"]["node"] for row in rows_of(found, "launch")] == ["0", "0", "1", "1"]


def test_srun_without_ranks_is_caught_as_single_process_runs(data_dir, tmp_path):
    # What `srun --ntasks=2 python -m mnist_dist.check` starts without RANK and WORLD_SIZE set in each task:
    # 2 processes that know only SLURM's variables (test_check_sbatch_... does it with a real srun).
    runs = [
        start_script(CHECK[0], check_args(data_dir), env={"SLURM_NTASKS": "2", "SLURM_PROCID": str(task)})
        for task in (0, 1)
    ]
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 1, stdout[-2000:] + stderr[-2000:]
        assert "Traceback" not in stderr and "launch" in stdout and "FAILED" in stdout
        (line,) = error_lines(stderr)
        assert line.startswith("error: check failed: launch: SLURM_NTASKS=2, but this process")
        assert "alone in a group of 1: 2 single-process runs" in line and "launch/slurm/check.sbatch" in line


def test_a_process_whose_peer_never_comes_fails_the_launch_after_the_collective_timeout(data_dir):
    peer_missing = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    peer_missing["MASTER_PORT"] = str(free_port())
    result = run_script(CHECK[0], check_args(data_dir, "--collective-timeout", "5"), env=peer_missing, timeout=120)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: check failed: launch: WORLD_SIZE=2, but the process group did not form (")
    assert "a process waits at most 5 s for the others, --collective-timeout" in line


def test_bad_options_end_in_one_line_and_exit_2(data_dir):
    result = run_script(CHECK[0], check_args(data_dir, "--sizes", "4K,3"))
    assert result.returncode == 2 and error_lines(result.stderr) == [
        "error: --sizes: 3 is not a multiple of 4 bytes (float32) from 4 to 1G: pass one, such as 4K."
    ]


def test_the_shards_check_fails_on_a_gap_an_overlap_or_another_split():
    assert shard_problem([[0, 2, 4], [1, 3, 0]], ["a", "a"], 5) == ""  # 0 twice: the sampler's padding of 1
    assert "1 of the 6 training samples are on no rank" in shard_problem([[0, 2, 4], [1, 3, 0]], ["a", "a"], 6)
    assert "3 samples are repeated where the sampler pads 1" in shard_problem([[0, 1, 2], [0, 1, 2]], ["a", "a"], 5)
    assert shard_problem([[0, 1], [2, 3]], ["a", "b"], 4).startswith("ranks [1] read another training split")


def test_expect_processes_catches_one_process_where_two_were_meant():
    # accelerate launch --num_processes 2 without --cpu on a machine without GPUs starts 1 process, which no
    # variable tells apart from a job of 1: only the user's --expect-processes does.
    facts = {"launcher_variable": "", "launched": 1, "group": 1, "rank": 0, "host": "h"}
    assert launch_problem(facts, 0) == ""
    assert launch_problem(facts, 2).startswith("the group has 1 processes, --expect-processes says 2")


def test_the_equivalence_check_fails_past_its_limit_on_the_worst_rank():
    config = make_config({"model": "lenet"})
    same = equivalence_row(config, 3, 64, [{"difference": 0.0, "change": 8e-3}, {"difference": 1e-7, "change": 8e-3}])
    assert same.ok and "largest weight difference 1.0e-07 (rank 1)" in same.result
    # A rank that trained alone: its weights off by about what the steps changed.
    alone = equivalence_row(config, 3, 64, [{"difference": 0.0, "change": 8e-3}, {"difference": 6e-3, "change": 8e-3}])
    assert not alone.ok and alone.why.startswith("after 3 steps rank 1's weights differ from one process's")


@pytest.mark.xdist_group("slurm")  # one SLURM cluster at a time (tests/conftest.py groups test_slurm*.py)
def test_check_sbatch_passes_as_written_and_a_bare_srun_fails(cluster, data_dir, tmp_path):
    environment = {"PYTHONUNBUFFERED": "1"}
    script = ["launch/slurm/check.sbatch", "--data-dir", data_dir, *SIZES]
    written = cluster.sbatch(script, [], cwd=REPO, env=environment)  # no sbatch option: as written
    bare_log = tmp_path / "bare.out"
    bare = f"srun .venv/bin/python -m mnist_dist.check --data-dir {data_dir} {' '.join(SIZES)}"
    options = ["--ntasks=2", "--cpus-per-task=1", f"--output={bare_log}", "--wrap", bare]
    wrong = cluster.sbatch([], options, cwd=REPO, env=environment)
    log = REPO / "slurm-logs" / f"mnist-check-{written}.out"
    try:
        cluster.wait_for_job(written, {"COMPLETED"}, timeout=180)
        output = log.read_text()
        assert "mnist-dist launch check: 2 processes" in output and output.count("WORLD_SIZE=2, group of 2") == 2
        assert "error:" not in output
    finally:
        log.unlink(missing_ok=True)  # the repository's slurm-logs/: leave it as it was
    cluster.wait_for_job(wrong, {"FAILED"}, timeout=180)
    lines = error_lines(bare_log.read_text())
    assert len(lines) == 2 and all("SLURM_NTASKS=2, but this process" in line for line in lines), lines
