"""One training job from a resolved config: set up, fit, always clean up."""

import datetime
import platform
from importlib.metadata import version
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_dist.cli import save_yaml
from mnist_dist.config import Config
from mnist_dist.data.datasets import load_dataset_main_first
from mnist_dist.distributed import build_accelerator
from mnist_dist.errors import UserError
from mnist_dist.trainer import Trainer


def prepare_run_dir(config: Config, accelerator: Accelerator) -> Path | None:
    """Name the run on the main process and share the name, so every rank agrees on the folder."""
    if config.dry_run:
        return None
    name = [config.run_name or f"{config.model}-{config.dataset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"]
    broadcast_object_list(name)  # a no-op in a single process
    config.run_name = name[0]
    run_dir = Path(config.run_dir or Path("runs") / config.run_name)
    config.run_dir = str(run_dir)
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(config, run_dir / "config.yaml")
        except OSError as error:
            raise UserError(
                f"cannot write the run directory {run_dir} ({error.strerror}): pass a writable --run-dir."
            ) from None
    return run_dir


def system_facts(accelerator: Accelerator) -> dict:
    return {
        "device": str(accelerator.device),
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "torch_version": torch.__version__,
        "torchvision_version": version("torchvision"),  # without importing it (about 1 s)
        "accelerate_version": version("accelerate"),
        "python_version": platform.python_version(),
    }


def train(config: Config) -> dict:
    if config.dry_run:
        config.epochs, config.max_steps, config.wandb = 1, 1, "disabled"
    accelerator = build_accelerator(config)
    trainer = None
    try:
        run_dir = prepare_run_dir(config, accelerator)
        data = load_dataset_main_first(config, accelerator)
        trainer = Trainer(config, accelerator, data, run_dir, system_facts(accelerator))
        results = trainer.fit()
        # No rank tears the process group down while another still talks in it: a gloo rank that
        # leaves early can abort the others ("terminate called without an active exception").
        accelerator.wait_for_everyone()
        return results
    finally:
        if trainer is not None:
            trainer.close()
        accelerator.end_training()  # also destroys the process group
