"""The launch: how many processes the launcher says it started, and the group Accelerate formed of them.

    accelerator = form_group(config)       # distributed.build_accelerator, as train.py forms it
    rows = launch_rows(accelerator, 0)     # a row per rank, from every rank's facts

The classic mistake is N single-process runs: `srun python ...` without RANK and WORLD_SIZE, or
torchrun on a machine without GPUs where Accelerate is not told cpu=True, starts N processes that each
train alone on the whole dataset, and nothing fails. The launcher's own count gives it away: each
process is then alone in a group of 1 while the launcher said N.
"""

import os
import socket

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.check.report import CheckFailed, Row
from mnist_dist.config import Config
from mnist_dist.distributed import build_accelerator, collective_timeout, device_type_of
from mnist_dist.errors import first_line

# Where a launcher says how many processes it started, read in this order: torchrun, accelerate launch
# and the job scripts set WORLD_SIZE; MPI launchers their own (Accelerate reads them too); SLURM sets
# SLURM_NTASKS in a job script and in each task srun starts (and no WORLD_SIZE: `srun python ...` alone
# starts N processes that know only their own SLURM_PROCID).
LAUNCHER_SIZES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
# The node a process runs on, as its launcher numbers the nodes: torchrun's --node-rank, SLURM's.
NODE_RANKS = ("GROUP_RANK", "SLURM_NODEID")
ONE_LAUNCHER = (
    "start every process with one launcher: torchrun, accelerate launch --cpu (on CPUs), or srun with RANK, "
    "LOCAL_RANK and WORLD_SIZE set in each task from SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS "
    "(launch/slurm/check.sbatch)"
)


def launcher_size() -> tuple[str, int]:
    """(the variable, the processes it says were started); ("", 1) where no launcher set one."""
    for variable in LAUNCHER_SIZES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return variable, int(value)
    return "", 1


def form_group(config: Config) -> Accelerator:
    """The Accelerator and its process group, made as train.py makes them. A group that does not form
    (a process that never joins, within --collective-timeout; an address in use or unset) is a failed
    launch, said by each process in its own line: the others may not be there to agree with."""
    try:
        return build_accelerator(config)
    except (RuntimeError, ValueError) as error:  # torch's DistStoreError and DistNetworkError; Accelerate's ValueError
        variable, launched = launcher_size()
        seconds = collective_timeout(config, device_type_of(config)).total_seconds()
        said = f"{variable}={launched}" if variable else "no launcher's variable"
        why = (
            f"{said}, but the process group did not form ({first_line(error).rstrip('.')}; a process waits at most "
            f"{seconds:g} s for the others, --collective-timeout): {ONE_LAUNCHER}"
        )
        raise CheckFailed("launch", why, same_on_every_rank=False) from None


def rank_facts(accelerator: Accelerator) -> dict:
    """This process as its launcher set it and as the group formed."""
    variable, launched = launcher_size()
    return {
        "host": socket.gethostname(),
        "node": next((os.environ[name] for name in NODE_RANKS if name in os.environ), ""),
        "rank": accelerator.process_index,
        "local_rank": accelerator.local_process_index,
        "device": str(accelerator.device),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else "none",
        "launcher_variable": variable,
        "launched": launched,
        "group": accelerator.num_processes,
    }


def launch_problem(facts: dict, expected: int) -> str:
    """Why this rank's launch is wrong, with the fix; "" when it is right."""
    variable, launched, group = facts["launcher_variable"], facts["launched"], facts["group"]
    if launched != group and group == 1:
        return (
            f"{variable}={launched}, but this process on {facts['host']} is alone in a group of 1: "
            f"{launched} single-process runs, each training on the whole dataset; {ONE_LAUNCHER}"
        )
    if launched != group:
        return (
            f"{variable}={launched} on rank {facts['rank']}, but the group has {group} processes: give every node "
            "the same world size (torchrun's --nnodes and --nproc-per-node, srun's --ntasks)"
        )
    if expected and group != expected:
        return (
            f"the group has {group} processes, --expect-processes says {expected}: start {expected} (accelerate "
            "launch starts 1 on a machine without GPUs unless given --cpu or launch/accelerate/cpu.yaml)"
        )
    return ""


def launch_rows(accelerator: Accelerator, expected: int) -> list[Row]:
    """A row per rank, in rank order, from every rank's facts (one gather). `expected`:
    --expect-processes, 0 when not given."""
    rows = []
    for facts in gather_object([rank_facts(accelerator)]):  # [this rank's] in one process
        node = f" (node {facts['node']})" if facts["node"] else ""
        said = f"{facts['launcher_variable']}={facts['launched']}" if facts["launcher_variable"] else "no launcher"
        result = (
            f"{facts['host']}{node}, local rank {facts['local_rank']}, {facts['device']}, {facts['backend']}; "
            f"{said}, group of {facts['group']}"
        )
        why = launch_problem(facts, expected)
        rows.append(Row("launch", f"rank {facts['rank']}", result, ok=not why, why=why, values=facts))
    return rows
