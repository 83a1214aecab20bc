"""k optimizer steps of the real trainer on N processes, against the same k steps of one process on the
global batch: the largest weight difference, against a limit.

The N processes take their steps with Trainer.train_step, on the parts train/build.py makes (the loader,
the model wrapped in DDP, the optimizer and schedule), as train.py does. Every rank then computes the one
process's steps itself, from a copy of the initial weights and the global batch (every rank's batches,
gathered): the forward and backward of each rank's batches in turn, each loss divided by their count, so
that the gradient is their mean, the sum DDP's all-reduce claims to average. BatchNorm normalizes each
rank's batch on its own, in both.
"""

import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from mnist_dist.check.report import Row
from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.config import Config
from mnist_dist.data.loaders import Batch, accumulation_groups
from mnist_dist.models import build_model
from mnist_dist.train.build import DataAndModel
from mnist_dist.train.loop import Trainer
from mnist_dist.train.optim import build_optimizer, build_scheduler
from mnist_dist.train.results import EpochSums

# The largest weight difference, as a share of the largest change the steps made. Float32 sums in
# another order differ in their last bits: measured by hand on 2 cores while choosing the limit (not
# recorded by a benchmark), 0 (2 and 4 processes: halving and quartering are exact) to 5e-4 (mlp's Adam,
# 3 processes) after 3 steps. A rank that trains alone (no all-reduce)
# measured 0.5 to 2, gradients summed instead of averaged 0.9 to 2 with SGD (Adam hardly minds the scale).
LIMIT = 1e-2


def stepping_trainer(parts: DataAndModel, config: Config, accelerator: Accelerator) -> Trainer:
    """The Trainer of train.py, of the parts train/build.py made, with what its train_step uses. The check
    takes steps only: no evaluation, tracking, checkpoints or stop signals (those parts are None)."""
    return parts.trainer(
        config,
        accelerator,
        facts={},
        state=TrainingState(world_size=accelerator.num_processes),
        sums=EpochSums(accelerator.device),
        selection=None,
        already_finished=False,
        console=None,
        tracker=None,
        progress=None,
        stop=None,
        agreement=None,
        checkpoints=None,
    )


def take_steps(trainer: Trainer, steps: int) -> tuple[list[list[Batch]], list[bool]]:
    """`steps` steps of Trainer.train_step on epoch 0's first batches, grouped as train_epoch groups them:
    the groups, and which steps fp16's gradient scaler skipped (overflowed gradients)."""
    trainer.model.train()
    trainer.loader.set_epoch(0)
    groups = accumulation_groups(trainer.loader, trainer.config.grad_accum_steps)
    taken, skipped = [], []
    for group in itertools.islice(groups, steps):
        trainer.train_step(group)
        taken.append(group)
        skipped.append(trainer.accelerator.optimizer_step_was_skipped)
    return taken, skipped


def global_batches(groups: list[list[Batch]], accelerator: Accelerator) -> list[list[Batch]]:
    """Each step's batches of every rank, rank by rank: the global batch the N processes trained on.
    The sampler gives every rank as many samples, so every rank's batch has the same size."""
    n, steps = accelerator.num_processes, []
    for group in groups:
        chunks = []
        for images, labels in group:
            everyone = zip(accelerator.gather(images).chunk(n), accelerator.gather(labels).chunk(n))
            chunks += list(everyone)  # (n x B, C, H, W) in rank order, cut back into each rank's B
        steps.append(chunks)
    return steps


def reference_model(parts: DataAndModel, config: Config, accelerator: Accelerator, initial: dict) -> torch.nn.Module:
    """A new model of the same kind, on the same device, with the initial weights."""
    model = build_model(config.model, parts.info, config.eval_flip)
    model = model.to(accelerator.device, memory_format=parts.memory_format)
    model.load_state_dict(initial)
    return model.train()


def one_process(
    parts: DataAndModel,
    config: Config,
    accelerator: Accelerator,
    initial: dict,
    plan: Iterable[tuple[list[Batch], bool]],
) -> torch.nn.Module:
    """The steps of one process on the global batches: `plan` holds (each step's batches of every rank,
    whether fp16's scaler skipped that step in the trainer)."""
    model = reference_model(parts, config, accelerator, initial)
    device, shape = accelerator.device, parts.memory_format
    optimizer = build_optimizer(config, model, device, accelerator.mixed_precision)
    scheduler = build_scheduler(config, optimizer, parts.length.total_steps, parts.length.steps_per_epoch)
    for chunks, skipped in plan:
        for images, labels in chunks:
            with accelerator.autocast():  # the precision the prepared model runs in; its logits in float32
                logits = model(parts.normalize(images).contiguous(memory_format=shape)).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            (loss / len(chunks)).backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        if not skipped:
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model


def largest_difference(weights: dict, model: torch.nn.Module) -> float:
    """The largest absolute difference between `model`'s parameters and the same names in `weights`."""
    return max((weights[name].float() - p.detach().float()).abs().max().item() for name, p in model.named_parameters())


def compare(parts: DataAndModel, config: Config, accelerator: Accelerator, steps: int) -> dict:
    """Take the steps, then the one process's: this rank's weights' largest difference from the one
    process's, and the largest change the steps made."""
    initial = {name: tensor.detach().clone() for name, tensor in parts.module.state_dict().items()}
    trainer = stepping_trainer(parts, config, accelerator)
    try:
        groups, skipped = take_steps(trainer, steps)
    finally:
        trainer.model = None  # the DDP wrapper, which holds the process group (train/job.py, leave_group)
    reference = one_process(parts, config, accelerator, initial, zip(global_batches(groups, accelerator), skipped))
    trained = {name: p.detach() for name, p in parts.module.named_parameters()}
    return {"difference": largest_difference(trained, reference), "change": largest_difference(initial, reference)}


def equivalence_row(config: Config, steps: int, global_batch: int, numbers: list[dict]) -> Row:
    """The row from every rank's numbers: the largest difference of any rank, as a share of the change."""
    worst = max(range(len(numbers)), key=lambda rank: numbers[rank]["difference"])
    difference, change = numbers[worst]["difference"], max(each["change"] for each in numbers)
    share = difference / change if change else (0.0 if difference == 0 else float("inf"))
    result = (
        f"{steps} steps of {config.model}, {global_batch} samples a step: largest weight difference "
        f"{difference:.1e} (rank {worst}), {share:.1e} of the steps' largest change {change:.1e} (limit {LIMIT:g})"
    )
    why = ""
    if share > LIMIT:
        why = (
            f"after {steps} steps rank {worst}'s weights differ from one process's on the global batch by "
            f"{difference:.1e}, {share:.1e} of what the steps changed (limit {LIMIT:g}): the processes do not train "
            "as one; look at the rows above (the group, the all-reduce, the shards), and try without --compile or fp16"
        )
    values = {"steps": steps, "global_batch": global_batch, "difference": difference, "change": change, "share": share}
    values |= {"limit": LIMIT, "per_rank": numbers}
    return Row("equivalence", f"{config.model}, {steps} steps", result, ok=not why, why=why, values=values)
