"""Devices, precision and the process group, all through one Accelerator."""

import datetime
import os
import re
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object, parse_flag_from_env, set_seed

from mnist_dist.atomic import WriteFailed
from mnist_dist.config import DEFAULT_TIMEOUTS, Config
from mnist_dist.errors import ConfigError


def launched_world_size() -> int:
    """Processes started together by torchrun / accelerate launch / SLURM srun (1 when run alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_precision(requested: str, device_type: str) -> str:
    """auto: bf16 on CUDA GPUs that support it, fp16 on older ones, off on CPU and MPS."""
    if requested == "auto":
        if device_type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and device_type == "cpu":
        raise ConfigError("mixed_precision fp16 needs a GPU; on the CPU use --mixed-precision no (or bf16).")
    return requested


def collective_timeout(config: Config, device_type: str) -> datetime.timedelta:
    """How long a collective may wait for the other processes (--collective-timeout; 0: by device).

    With NCCL, a timed-out collective must also end the process: asynchronous error handling
    (TORCH_NCCL_ASYNC_ERROR_HANDLING=1) tears the communicator down and raises, instead of hanging.
    """
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    seconds = config.collective_timeout or DEFAULT_TIMEOUTS["cuda" if device_type == "cuda" else "cpu"]
    return datetime.timedelta(seconds=seconds)


# How a lost peer shows, measured with torch 2.14 and real processes (a peer stopped past the timeout,
# one that exited, one killed with SIGKILL). NCCL and the TCPStore raise torch's own types, all
# torch.distributed.DistError: DistBackendError (NCCL's errors and watchdog), DistNetworkError (a
# store connection lost), DistStoreError (a store wait timed out). Gloo raises none of them: a plain
# RuntimeError, from wherever the result is waited on (backward, DDP's forward, c10d's collectives),
# whose message its TCP transport signs with its own source path ("[.../gloo/transport/tcp/pair.cc:561]
# Connection closed by peer", "[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting
# 3000ms for recv operation"); after a timeout the next collective says "Application timeout caused
# pair closure". Only those two marks count: a RuntimeError of any other code that merely says "timed
# out" is a bug, and keeps its traceback.
GLOO_TRANSPORT_FAILURE = re.compile(r"gloo/transport/\w+/\w+\.cc:\d+\]|Application timeout caused pair closure")


def lost_peer(error: BaseException) -> bool:
    """Whether a failed collective means another process stopped responding or ended: torch's
    distributed error types, or gloo's transport failing (which has no type of its own)."""
    if not torch.distributed.is_initialized():
        return False
    if isinstance(error, torch.distributed.DistError):
        return True
    return type(error) is RuntimeError and GLOO_TRANSPORT_FAILURE.search(str(error)) is not None


def missed_rendezvous(error: BaseException) -> bool:
    """Whether forming the process group failed because another process did not join within the timeout
    (it stopped responding or ended before it got there): torch's store wait timed out, DistStoreError
    ("wait timeout after 15000ms, keys: /default_pg/0//cpu//0/1", torch 2.14, a rank SIGSTOPped during
    its imports). Other errors of the rendezvous (a port in use, an address that does not answer) are
    not a lost process and keep their traceback."""
    forming = launched_world_size() > 1 and not torch.distributed.is_initialized()
    return forming and isinstance(error, torch.distributed.DistStoreError)


def join_restarted_group(backend: str, timeout: datetime.timedelta) -> None:
    """Form the process group of a torchrun restart (--max-restarts) ourselves.

    torchrun's agent serves one key-value store for all attempts, and the restarted workers would
    read the killed workers' addresses from the first attempt ("Gloo connectFullMesh failed ...
    Connection refused"; seen with torch 2.14). Keys under a prefix per attempt start clean.
    Accelerate then finds the group initialized and uses it.
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if attempt == 0 or not agent_store or launched_world_size() == 1 or torch.distributed.is_initialized():
        return
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    torch.distributed.init_process_group(
        backend,
        store=torch.distributed.PrefixStore(f"attempt-{attempt}", store),
        rank=int(os.environ["RANK"]),
        world_size=launched_world_size(),
        timeout=timeout,
    )


def device_type_of(config: Config) -> str:
    """cuda, mps or cpu: what this job trains on (--cpu and `accelerate launch --cpu` choose the CPU)."""
    force_cpu = config.cpu or parse_flag_from_env("ACCELERATE_USE_CPU")  # set by `accelerate launch --cpu`
    has_cuda = torch.cuda.is_available() and not force_cpu
    has_mps = torch.backends.mps.is_available() and not force_cpu and not has_cuda
    return "cuda" if has_cuda else "mps" if has_mps else "cpu"


def build_accelerator(config: Config) -> Accelerator:
    device_type = device_type_of(config)
    if device_type == "mps" and launched_world_size() > 1:
        raise ConfigError("MPS runs one process only: launch train.py without torchrun, or pass --cpu for a CPU group.")
    if device_type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores among this node's processes before the first op (torchrun sets
        # OMP_NUM_THREADS=1 itself; a single process would otherwise take every core anyway).
        processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes_here))
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = collective_timeout(config, device_type)
    join_restarted_group("nccl" if device_type == "cuda" else "gloo", timeout)
    # Without GPUs, Accelerate forms a gloo group from torchrun's processes only when told
    # cpu=True; otherwise each process silently trains alone on the whole dataset.
    accelerator = Accelerator(
        cpu=device_type == "cpu",
        mixed_precision=resolve_precision(config.mixed_precision, device_type),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
    )
    if accelerator.num_processes != launched_world_size():
        raise RuntimeError(
            f"launched {launched_world_size()} processes but Accelerate formed a group of {accelerator.num_processes}"
        )
    # The same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    set_seed(config.seed, deterministic=config.deterministic)
    return accelerator


def fail_together(accelerator: Accelerator, failure: Exception | None) -> None:
    """Every rank calls this at the same point; when any rank brings a failure, every rank raises it
    (the lowest rank's), so that none is left waiting in a later collective for one that has gone.

    One collective. The ranks then pass a barrier before they leave: a gloo rank that tears the group
    down while another still finishes the gather can abort it ("terminate called without an active
    exception").
    """
    failures = [each for each in gather_object([failure]) if each is not None]  # [failure] in one process
    if failures:
        accelerator.wait_for_everyone()
        failures[0].same_on_every_rank = True  # every rank raises it: said once (errors.report_error)
        raise failures[0]


def write_on_main(accelerator: Accelerator, write: Callable[[], None], enabled: bool = True) -> None:
    """`write()` on the main process (when `enabled`), then every rank learns whether it failed: a
    failed write (a full disk) ends every rank with its one line, instead of the main process alone.
    `enabled` must be the same on every rank."""
    if not enabled:  # the same on every rank (a dry run writes nothing): no collective
        return
    failure = None
    if accelerator.is_main_process:
        try:
            write()
        except WriteFailed as error:
            failure = error
    fail_together(accelerator, failure)


def gather_average_hook(process_group, bucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook for gloo: gather every rank's gradients, sum them in rank order, average.

    A ring all_reduce takes twice the message rounds of a ring all_gather (reduce-scatter, then
    all-gather), and on small CPU models the rounds' latency more than the bytes sets the cost: with 2
    processes here, bench/allreduce.py measured all_reduce at 1.2-2.1x the time of an all_gather of the
    same gradients (LeNet: 3.2 against 1.5 ms, on a step of 5-7 ms). Every rank adds the same tensors
    in the same order, so all ranks step with identical gradients. An all_gather moves world_size / 2
    times the bytes of an all_reduce: fine for these models' 0.1-0.6 MB of gradients, not for large
    models over a real network.
    """
    group = process_group or torch.distributed.group.WORLD
    flat = bucket.buffer()
    parts = [torch.empty_like(flat) for _ in range(torch.distributed.get_world_size(group))]
    gathered = torch.distributed.all_gather(parts, flat, group=group, async_op=True).get_future()

    def average(done: torch.futures.Future) -> torch.Tensor:
        # torch calls this on a failed gather too (a lost peer), and `parts` then holds uninitialised memory:
        # without the wait, the step went on with it (seen with torch 2.14 and a peer that had exited).
        done.wait()  # raises the gather's error
        flat.copy_(parts[0])
        for part in parts[1:]:
            flat.add_(part)
        return flat.div_(len(parts))

    return gathered.then(average)


def wrap_for_training(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: Config, accelerator: Accelerator
):
    """(model to call, optimizer whose state is saved, optimizer to step): DDP-wrapped when distributed,
    compiled with --compile; the bare `model` and `optimizer` stay what is saved and loaded."""
    wrapped, prepared = accelerator.prepare(model, optimizer)
    configure_ddp(wrapped)
    # Accelerate's optimizer wrapper is needed for fp16's gradient scaler only. Without one, step
    # the optimizer itself: the wrapper looks packages up on every step and zero_grad inspects
    # signatures (0.4 ms a step here, a quarter of the MLP's step: bench/overhead.py).
    stepped = prepared if accelerator.scaler is not None else optimizer
    if config.compile:  # after DDP wrapping, as PyTorch recommends
        wrapped = torch.compile(wrapped)
    return wrapped, prepared, stepped


def share_rank0_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Every rank takes rank 0's buffers (BatchNorm statistics), the ones the saved model holds.

    Each rank keeps its own while training (configure_ddp), so before an evaluation all take rank
    0's and every rank evaluates one model. Evaluation runs the bare module, not DDP's wrapper,
    whose forward may join collectives that a rank without evaluation batches would never reach.
    """
    if world_size > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def configure_ddp(model: torch.nn.Module) -> None:
    """Trim what a DDP-wrapped model synchronizes per step (a no-op for an unwrapped model)."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return
    # DDP would broadcast rank 0's BatchNorm statistics before every forward: one more collective
    # per step. They are used only to evaluate and save, and the trainer takes rank 0's for both,
    # so each rank keeps its own while training (DDP still syncs them once, at wrapping).
    model.forward_sync_buffers = False
    if torch.distributed.get_backend() == "gloo":  # NCCL's all_reduce stays
        model.register_comm_hook(None, gather_average_hook)
