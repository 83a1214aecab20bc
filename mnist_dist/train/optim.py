"""Optimizers and learning-rate schedules by name. Schedules step once per optimizer step."""

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, OneCycleLR, StepLR

from mnist_dist.config import Config


def build_optimizer(
    config: Config, model: torch.nn.Module, device: torch.device, mixed_precision: str
) -> torch.optim.Optimizer:
    params = model.parameters()
    # Fused kernels update every parameter in one pass instead of several ops per tensor: on CUDA
    # fewer launches, on the CPU fewer trips through memory (bench/model_step.py: the MLP's whole
    # Adam step 1.14x faster, LeNet's SGD step unchanged). MPS keeps torch's default: untested there.
    # Not with fp16: its gradient scaler then skips overflowed steps inside the fused kernel, where
    # Accelerate cannot see it, and the lr schedule would advance on steps never taken.
    speed = {"fused": True} if device.type in ("cuda", "cpu") and mixed_precision != "fp16" else {}
    if config.optimizer == "sgd":
        nesterov = config.nesterov and config.momentum > 0  # torch rejects Nesterov without momentum
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=nesterov, weight_decay=config.weight_decay, **speed
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **speed)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **speed)


def build_scheduler(
    config: Config, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int
) -> LRScheduler:
    if config.schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "onecycle":
        # Warm up from lr/25 to lr over the first 30% of the steps, then anneal to lr/25e4.
        return OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    if config.schedule == "step":
        return StepLR(optimizer, step_size=config.lr_step_epochs * steps_per_epoch, gamma=config.lr_gamma)
    return LambdaLR(optimizer, lambda step: 1.0)
