"""The Trainer's parts, made once and in order and handed to it ready-made: this rank's data, the
model and optimizer, the state resumed from a checkpoint, and what watches and records the run.

    build_trainer()  called by train/job.py once the run's folder is locked and the data loaded
"""

import torch
from accelerate import Accelerator

from mnist_dist.checkpoint.reader import resume
from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.checkpoint.writer import CheckpointWriter, Contents
from mnist_dist.config import Config, stop_signal_names
from mnist_dist.data.datasets import Data
from mnist_dist.data.images import Normalizer
from mnist_dist.data.loaders import build_train_loader
from mnist_dist.distributed import fail_together, wrap_for_training
from mnist_dist.evaluate.exact import EvalSplits
from mnist_dist.models import build_model
from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.train.agreement import Agreement
from mnist_dist.train.loop import Trainer
from mnist_dist.train.optim import build_optimizer, build_scheduler
from mnist_dist.train.plan import RunLength, finished
from mnist_dist.train.progress import ProgressReport
from mnist_dist.train.results import EpochSums
from mnist_dist.train.selection import ModelSelection
from mnist_dist.train.signals import StopRequest


def build_trainer(config: Config, accelerator: Accelerator, data: Data, facts: dict, sources: dict) -> Trainer:
    """The trainer with every part made: this rank's data, the model and optimizer, the state resumed
    from the checkpoint --resume names (if any), and what watches and records the run. `facts`: the
    system's (tracking/facts.py); `sources`: what set each option, for the config table."""
    parts = DataAndModel(config, accelerator, data)
    console = TrainingConsole(accelerator.is_main_process)
    state, sums, selection, already_finished = resume_state(config, accelerator, parts, console)
    if not already_finished:
        console.show_config(config, facts, sources, parts.splits.describe())
    tracker = start_tracker(config, accelerator, facts, console, state, logs=not already_finished)
    stop = StopRequest(stop_signal_names(config.stop_signals))
    checkpoints, agreement = checkpoints_and_agreement(
        config, accelerator, parts, state, sums, selection, tracker, stop
    )
    return Trainer(
        config=config,
        accelerator=accelerator,
        facts=facts,
        info=data.info,
        loader=parts.loader,
        normalize=parts.normalize,
        splits=parts.splits,
        length=parts.length,
        module=parts.module,
        model=parts.wrapped,
        step_optimizer=parts.step_optimizer,
        scheduler=parts.scheduler,
        memory_format=parts.memory_format,
        state=state,
        sums=sums,
        selection=selection,
        already_finished=already_finished,
        console=console,
        tracker=tracker,
        progress=ProgressReport(console, tracker, config.log_every, accelerator.num_processes),
        stop=stop,
        agreement=agreement,
        checkpoints=checkpoints,
    )


class DataAndModel:
    """This rank's training batches and evaluation splits, the model on the device, its optimizer and
    schedule. The bare model (`module`) is what is saved and loaded, the `wrapped` one (DDP, --compile)
    what trains."""

    def __init__(self, config: Config, accelerator: Accelerator, data: Data):
        device, world_size = accelerator.device, accelerator.num_processes
        self.info = data.info
        self.loader = build_train_loader(config, data.train, device, accelerator.process_index, world_size)
        self.normalize = Normalizer(data.info, device)
        self.splits = EvalSplits(data, config, self.normalize, accelerator)  # val each epoch, test at the end
        self.length = RunLength.of(config, self.loader.batches_per_epoch)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model = build_model(config.model, data.info, config.eval_flip)
        self.module = model.to(device, memory_format=self.memory_format)
        optimizer = build_optimizer(config, self.module, device, accelerator.mixed_precision)
        # Not passed to accelerator.prepare: its wrapper steps a schedule once per process per step.
        self.scheduler = build_scheduler(config, optimizer, self.length.total_steps, self.length.steps_per_epoch)
        self.wrapped, self.optimizer, self.step_optimizer = wrap_for_training(
            self.module, optimizer, config, accelerator
        )


def resume_state(
    config: Config, accelerator: Accelerator, parts: DataAndModel, console: TrainingConsole
) -> tuple[TrainingState, EpochSums, ModelSelection, bool]:
    """Where training stands: from the checkpoint --resume names (auto: the run's newest loadable one),
    loaded into `parts`, or from the start. Also whether it is a finished run run again, which only
    says so: nothing is trained, logged or written."""
    loaded = resume(config, accelerator, parts.module, parts.optimizer, parts.scheduler, console.print)
    state = loaded.state if loaded else TrainingState(world_size=accelerator.num_processes)
    sums = EpochSums(accelerator.device, loaded.rank_state if loaded else None)
    best = loaded.best if loaded else None  # the best weights so far, with their step in state
    selection = ModelSelection(state, config.early_stopping_patience, parts.splits.held_out, best)
    done = finished(parts.length, state, selection)
    already_finished = bool(loaded) and done and (config.run_path / "summary.json").is_file()
    if loaded and not already_finished:
        console.print(f"resumed from {loaded.path} (step {state.step}, epoch {state.epoch + 1})")
    return state, sums, selection, already_finished


def start_tracker(
    config: Config, accelerator: Accelerator, facts: dict, console: TrainingConsole, state: TrainingState, logs: bool
) -> Tracker:
    """metrics.jsonl and W&B (main process; none when `logs` is off). A resumed run continues the
    checkpoint's W&B run; from now on `state` carries its id, so a later resume continues it too."""
    files = config.run_path if config.writes_files else None
    logs = logs and accelerator.is_main_process
    tracker = Tracker(config, files, logs, facts, console.print, state.wandb_run_id, state.step)
    state.wandb_run_id = tracker.run_id
    fail_together(accelerator, tracker.failure)  # metrics.jsonl could not be trimmed (main process)
    return tracker


def checkpoints_and_agreement(
    config: Config,
    accelerator: Accelerator,
    parts: DataAndModel,
    state: TrainingState,
    sums: EpochSums,
    selection: ModelSelection,
    tracker: Tracker,
    stop: StopRequest,
) -> tuple[CheckpointWriter, Agreement]:
    """The checkpoint writer and the ranks' agreement, which need each other: a save that is due waits
    for the ranks' agreement, and a stop they agree on saves."""
    best = lambda: selection.best_weights  # noqa: E731 (read at each save)
    contents = Contents(state, parts.module, parts.optimizer, parts.scheduler, sums.saved, best)
    agree = lambda step: agreement.check(step, force=True)  # noqa: E731 (`agreement` is made next)
    checkpoints = CheckpointWriter(config, accelerator, parts.info, contents, agree)
    agreement = Agreement(accelerator, sums, tracker, stop, checkpoints)
    return checkpoints, agreement
