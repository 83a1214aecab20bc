"""Real processes in one gloo group: shards, world size, exact evaluation, and a peer that goes away."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_script, script_command, script_environment

PROBE = "tests/integration/probe_sharding.py"


def run_probe(script: str, out: Path, processes: int, launcher: str | None = None) -> Path:
    """Run a probe script that writes its per-rank results into the new folder `out`.

    torchrun runs --standalone: it takes a free port as it binds it, where a port found free beforehand
    (free_port) can be taken by another process in between, and the probe would fail for it.
    """
    out.mkdir()
    if launcher == "torchrun":
        command = script_command(script, [out], processes, launcher, rendezvous=["--standalone"])
        environment = script_environment()
        result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    else:
        result = run_script(script, [out], processes, launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def probe(tmp_path, processes, launcher=None):
    out = run_probe(PROBE, tmp_path / f"{processes}-{launcher}", processes, launcher)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(processes)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("probe"), 2, "torchrun")


def test_two_processes_form_one_group(two_ranks):
    # Without cpu=True, Accelerate would give each CPU process a world of its own.
    assert [report["world_size"] for report in two_ranks] == [2, 2]
    assert [report["rank"] for report in two_ranks] == [0, 1]


def test_training_shards_are_disjoint_and_cover_the_dataset(two_ranks):
    for epoch in range(2):
        first, second = (set(report["epochs"][epoch]) for report in two_ranks)
        assert not first & second
        assert first | second == set(range(1000))


def test_training_order_changes_between_epochs(two_ranks):
    for report in two_ranks:
        assert report["epochs"][0] != report["epochs"][1]


def test_evaluation_counts_every_sample_once_and_matches_one_process(two_ranks, tmp_path):
    (single,) = probe(tmp_path, 1, "python")
    for report in two_ranks:
        assert report["eval"]["count"] == 1234
        assert report["eval"] == single["eval"]  # exact: the same floats, not approximately


def test_accelerate_launch_with_the_cpu_config_forms_one_group(tmp_path):
    reports = probe(tmp_path, 2, "accelerate")
    assert [report["world_size"] for report in reports] == [2, 2]


def test_gloo_gradient_sync_matches_ddps_all_reduce_and_keeps_buffers_per_rank(tmp_path):
    out = run_probe("tests/integration/probe_gradient_sync.py", tmp_path / "sync", 2, "torchrun")
    ranks = [torch.load(out / f"rank{rank}.pt") for rank in range(2)]
    for key, default in ranks[0]["default"].items():
        # The trainer's hook averages like DDP's all_reduce, and both ranks get bit-identical gradients.
        assert torch.allclose(ranks[0]["configured"][key], default, rtol=1e-5, atol=1e-7), key
        assert torch.equal(ranks[0]["configured"][key], ranks[1]["configured"][key]), key
    # No broadcast before each forward: rank 1's BatchNorm statistics are those of its own batches
    # alone, as in a local model; with DDP's default, rank 0's overwrite them before the second.
    key = "1.running_mean"
    assert torch.equal(ranks[1]["configured buffers"][key], ranks[1]["local buffers"][key])
    assert not torch.equal(ranks[1]["default buffers"][key], ranks[1]["local buffers"][key])


@pytest.mark.parametrize("peer", ["exits", "stops"])
def test_a_lost_peer_is_told_by_where_the_error_comes_from_not_by_its_words(tmp_path, peer):
    # Two plain processes, as srun starts them: no launcher ends rank 0 when rank 1 goes away.
    out = tmp_path / peer
    out.mkdir()
    command = [sys.executable, "tests/integration/probe_lost_peer.py", str(out), peer]
    ranks = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env={**script_environment(), "RANK": str(rank), "WORLD_SIZE": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    report = json.loads((out / "rank0.json").read_text())
    # Gloo raises plain RuntimeErrors (torch 2.14); the step's comes through the gradient hook, which
    # used to swallow it and average uninitialised memory.
    assert [failure["collective"] for failure in report["failures"]] == ["step", "all_reduce"]
    assert all(failure["raised"] and failure["lost_peer"] for failure in report["failures"]), report
    assert report["a bug that says timed out"] is False
