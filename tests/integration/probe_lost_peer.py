"""Run as 2 plain processes by test_distributed.py (RANK, WORLD_SIZE set; no launcher that would end the
survivor, as with srun on several nodes): rank 1 goes away while rank 0 trains, and rank 0 reports what
the failed collectives raised and whether distributed.lost_peer recognises them. Writes <out>/rank0.json.

    python probe_lost_peer.py OUT exits   # rank 1 exits between two steps
    python probe_lost_peer.py OUT stops   # rank 1 stops answering past the collective timeout
"""

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

from mnist_dist.distributed import configure_ddp, lost_peer

TIMEOUT_SECONDS = 2


def step(model: torch.nn.Module) -> None:
    model(torch.randn(4, 10)).sum().backward()


def failures(model: torch.nn.Module) -> list[dict]:
    """What a training step (the gradient sync) and a plain all_reduce raise once the peer is gone."""
    found = []
    for name, attempt in (
        ("step", lambda: step(model)),
        ("all_reduce", lambda: torch.distributed.all_reduce(torch.ones(3))),
    ):
        try:
            attempt()
            found.append({"collective": name, "raised": None})
        except Exception as error:  # whatever it is, it is the finding
            found.append(
                {
                    "collective": name,
                    "raised": type(error).__name__,
                    "message": str(error)[:300],
                    "lost_peer": lost_peer(error),
                }
            )
    return found


def main(out: Path, mode: str) -> None:
    rank = int(os.environ["RANK"])
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{out / 'store'}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=TIMEOUT_SECONDS),
    )
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(10, 10))
    configure_ddp(model)  # the trainer's gloo set-up: gather_average_hook
    for _ in range(3):  # past DDP's rebuild of its buckets at the second step
        step(model)
    if rank == 1:
        while mode == "stops" and not (out / "rank0.json").exists():  # silent until rank 0 has reported
            time.sleep(0.1)
        os._exit(0)  # the group is broken: leave without tearing it down
    time.sleep(1)  # rank 1 has gone (exits) or is asleep (stops)
    report = {"failures": failures(model), "a bug that says timed out": lost_peer(RuntimeError("read timed out"))}
    (out / "rank0.json").write_text(json.dumps(report))
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
