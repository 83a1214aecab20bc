"""Several nodes on one machine: 2 "nodes" x 2 processes train exactly like 1 node x 4 processes.

Each node runs its own torchrun, as launch/slurm/multi_node.sbatch does on a cluster: the same
--nnodes, its own --node-rank, and a static rendezvous at node 0 (here 127.0.0.1). Global ranks are
node rank x 2 + local rank, so every rank sees the same shard as in the one-node run.
"""

import subprocess
from pathlib import Path

import psutil
import torch
from helpers import deterministic_args, free_port, start_script, summary
from safetensors.torch import load_file

# 30 optimizer steps of 4 x 32 samples: short, since 4 processes share 2 cores here.
ARGS = deterministic_args(30, "--no-checkpoint-epochs", "--wandb", "disabled")


def torchrun(
    nnodes: int, node_rank: int, nproc_per_node: int, port: int, run_dir: Path, data_dir: Path
) -> subprocess.Popen:
    """One node's torchrun, its workers' stderr merged into stdout."""
    rendezvous = ["--nnodes", str(nnodes), "--node-rank", str(node_rank)]
    rendezvous += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
    args = [*ARGS, "--data-dir", data_dir, "--run-dir", run_dir]
    return start_script("train.py", args, nproc_per_node, rendezvous=rendezvous, stderr=subprocess.STDOUT)


def finish(*launchers: subprocess.Popen, timeout: float = 300) -> None:
    try:
        outputs = [launcher.communicate(timeout=timeout)[0] for launcher in launchers]
    except subprocess.TimeoutExpired:  # e.g. a node waiting for a peer that failed: end them all
        for launcher in launchers:
            for process in [*psutil.Process(launcher.pid).children(recursive=True), psutil.Process(launcher.pid)]:
                process.kill()
            launcher.wait()
        raise
    for launcher, output in zip(launchers, outputs):
        assert launcher.returncode == 0, output[-3000:]


def test_two_nodes_of_two_processes_match_one_node_of_four(data_dir, tmp_path):
    two_nodes, one_node = tmp_path / "two-nodes", tmp_path / "one-node"
    port = free_port()
    finish(*(torchrun(2, node_rank, 2, port, two_nodes, data_dir) for node_rank in (0, 1)))
    finish(torchrun(1, 0, 4, free_port(), one_node, data_dir))

    assert summary(two_nodes)["world_size"] == summary(one_node)["world_size"] == 4
    assert summary(two_nodes)["steps"] == summary(one_node)["steps"] == 30
    assert summary(two_nodes)["test_accuracy"] == summary(one_node)["test_accuracy"]
    # Same ranks, same shards, same all-reduce: the same bits.
    weights, expected = load_file(two_nodes / "model.safetensors"), load_file(one_node / "model.safetensors")
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
