"""One training job from a parsed config: resolve it, set up, fit, always clean up."""

import dataclasses
import datetime
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_dist.cli import save_yaml
from mnist_dist.config import Config
from mnist_dist.data.datasets import load_dataset_main_first
from mnist_dist.distributed import build_accelerator, lost_peer
from mnist_dist.errors import LostProcess, UserError, first_line
from mnist_dist.facts import system_facts
from mnist_dist.trainer import Trainer


def resolve(config: Config, accelerator: Accelerator) -> Config:
    """The run's final config, the same on every rank: its name and folder chosen, a dry run cut to one step.

    The main process names the run (by the clock) and shares the name, so all ranks agree on the folder.
    """
    if config.dry_run:
        config = dataclasses.replace(config, epochs=1, max_steps=1, wandb="disabled")
    name = [config.run_name or f"{config.model}-{config.dataset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"]
    broadcast_object_list(name)  # a no-op in a single process
    run_dir = str(Path(config.run_dir or Path("runs") / name[0]))  # as Path spells it: ./out/ -> out
    return dataclasses.replace(config, run_name=name[0], run_dir=run_dir)


def prepare_run_dir(config: Config, accelerator: Accelerator) -> None:
    """The main process makes the run directory and writes the resolved config.yaml into it."""
    if not (config.writes_files and accelerator.is_main_process):
        return
    try:
        config.run_path.mkdir(parents=True, exist_ok=True)
        save_yaml(config, config.run_path / "config.yaml")
    except OSError as error:
        raise UserError(
            f"cannot write the run directory {config.run_dir} ({error.strerror}): pass a writable --run-dir."
        ) from None


def train(config: Config) -> dict:
    accelerator = build_accelerator(config)
    trainer = None
    try:
        config = resolve(config, accelerator)
        prepare_run_dir(config, accelerator)
        data = load_dataset_main_first(config, accelerator)
        trainer = Trainer(config, accelerator, data, system_facts(accelerator))
        results = trainer.fit()
        # No rank tears the process group down while another still talks in it: a gloo rank that
        # leaves early can abort the others ("terminate called without an active exception").
        accelerator.wait_for_everyone()
        return results
    except RuntimeError as error:
        if trainer is None or not lost_peer(error):
            raise
        raise LostProcess(trainer.lost_process_message(first_line(error))) from None
    finally:
        if trainer is not None:
            trainer.close()
        accelerator.end_training()  # also destroys the process group
