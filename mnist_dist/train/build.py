"""The Trainer's parts, made once and in order and handed to it ready-made: this rank's data, the
model and optimizer, the state resumed from a checkpoint, and what watches and records the run.

    build_trainer()  called by train/job.py once the run's folder is locked and the data loaded
"""

import json
from pathlib import Path

import torch
from accelerate import Accelerator

from mnist_dist.checkpoint.reader import Target, resume
from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.checkpoint.writer import CheckpointWriter, Contents
from mnist_dist.config import Config
from mnist_dist.data.datasets import Data
from mnist_dist.data.images import Normalizer
from mnist_dist.data.loaders import build_train_loader
from mnist_dist.distributed import fail_together, wrap_for_training
from mnist_dist.evaluate.exact import EvalSplits
from mnist_dist.models import build_model
from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.tracking.tracker import Tracker
from mnist_dist.train.agreement import Agreement
from mnist_dist.train.flops import job_utilization
from mnist_dist.train.loop import Trainer
from mnist_dist.train.optim import build_optimizer, build_scheduler
from mnist_dist.train.plan import RunLength, finished
from mnist_dist.train.progress import ProgressReport
from mnist_dist.train.results import EpochSums
from mnist_dist.train.selection import ModelSelection
from mnist_dist.train.signals import StopRequest
from mnist_dist.train.stragglers import Stragglers


def build_trainer(
    config: Config, accelerator: Accelerator, data: Data, facts: dict, sources: dict, stop: StopRequest
) -> Trainer:
    """The trainer with every part made: this rank's data, the model and optimizer, the state resumed
    from the checkpoint --resume names (if any), and what watches, records and stops the run (`stop`:
    the command's, train/signals.py). `facts`: tracking/facts.py; `sources`: for the config table."""
    parts = DataAndModel(config, accelerator, data)
    console = TrainingConsole(accelerator.is_main_process)
    utilization = job_utilization(accelerator, parts.module, data.info, console.print)  # for MFU: FLOPs and peak
    state, sums, selection, already_finished = resume_state(config, accelerator, parts, console)
    if not already_finished:
        console.show_config(config, facts, sources, parts.splits.describe())
    tracker = start_tracker(config, accelerator, facts, console, state, logs=not already_finished)
    agreement = checkpoints_and_agreement(config, accelerator, parts, state, sums, selection, tracker, stop, console)
    return parts.trainer(
        config,
        accelerator,
        facts=facts,
        state=state,
        sums=sums,
        selection=selection,
        already_finished=already_finished,
        console=console,
        tracker=tracker,
        progress=ProgressReport(console, tracker, config.log_every, accelerator.num_processes),
        stop=stop,
        agreement=agreement,
        checkpoints=agreement.checkpoints,
        timer=agreement.stragglers.timer,
        utilization=utilization,
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

    def trainer(self, config: Config, accelerator: Accelerator, **roles) -> Trainer:
        """A Trainer of these parts; `roles`: where training stands and what watches, records and stops it
        (build_trainer gives them all; the launch check, mnist_dist/check, only what train_step uses)."""
        return Trainer(
            config=config,
            accelerator=accelerator,
            info=self.info,
            loader=self.loader,
            normalize=self.normalize,
            splits=self.splits,
            length=self.length,
            module=self.module,
            model=self.wrapped,
            step_optimizer=self.step_optimizer,
            scheduler=self.scheduler,
            memory_format=self.memory_format,
            **roles,
        )


def resume_state(
    config: Config, accelerator: Accelerator, parts: DataAndModel, console: TrainingConsole
) -> tuple[TrainingState, EpochSums, ModelSelection, bool]:
    """Where training stands: from the checkpoint --resume names (auto: the run's newest loadable one),
    loaded into `parts`, or from the start. Also whether it is a finished run run again, which only
    says so: nothing is trained, logged or written."""
    target = Target(parts.module, parts.optimizer, parts.scheduler, train_samples=len(parts.loader.sampler.dataset))
    loaded = resume(config, accelerator, target, console.print)
    state = loaded.state if loaded else TrainingState(world_size=accelerator.num_processes)
    sums = EpochSums(accelerator.device, loaded.rank_state if loaded else None)
    best = loaded.best if loaded else None  # the best weights so far, with their step in state
    selection = ModelSelection(state, config.early_stopping_patience, parts.splits.held_out, best)
    done = bool(loaded) and finished(parts.length, state, selection)
    recorded = summarized_step(config.run_path / "summary.json") if done else None
    if done and recorded != state.step:  # stopped between its final files: summary.json is written last
        before = f"summary.json of step {recorded}" if recorded is not None else "no summary.json"
        console.print(f"run {config.run_dir} trained to step {state.step} but has {before}: writing its final files")
    already_finished = done and recorded == state.step
    if loaded and not already_finished:
        resized = f", {loaded.resized}" if loaded.resized else ""
        console.print(f"resumed from {loaded.path} (step {state.step}, epoch {state.epoch + 1}{resized})")
    return state, sums, selection, already_finished


def summarized_step(path: Path) -> int | None:
    """The step summary.json records (the run's last step when its final files were written), or None."""
    try:
        steps = json.loads(path.read_text()).get("steps")
    except (OSError, ValueError, AttributeError):
        return None
    return steps if isinstance(steps, int) else None


def start_tracker(
    config: Config, accelerator: Accelerator, facts: dict, console: TrainingConsole, state: TrainingState, logs: bool
) -> Tracker:
    """metrics.jsonl and W&B (main process; none when `logs` is off). A resumed run continues the
    checkpoint's W&B run; from now on `state` carries its id, so a later resume continues it too."""
    files = config.run_path if config.writes_files else None
    logs = logs and accelerator.is_main_process
    tracker = Tracker(config, files, logs, facts, console.print, state.wandb_run_id, state.step)
    state.wandb_run_id = tracker.run_id
    change = state.world_size_changes[-1] if state.world_size_changes else None
    if logs and change and change["step"] == state.step and change["to"] == accelerator.num_processes:
        tracker.log("world_size", state.step, {"from": change["from"], "to": change["to"]})  # this resume's
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
    console: TrainingConsole,
) -> Agreement:
    """The ranks' agreement, with the checkpoint writer (its `checkpoints`), which need each other: a
    save that is due waits for the ranks' agreement, and a stop they agree on saves; and with the
    ranks' step times (its `stragglers`), which its collective carries (train/stragglers.py)."""
    best = lambda: selection.best_weights  # noqa: E731 (read at each save)
    contents = Contents(state, parts.module, parts.optimizer, parts.scheduler, sums.saved, best)
    agree = lambda step: agreement.check(step, force=True)  # noqa: E731 (`agreement` is made next)
    checkpoints = CheckpointWriter(config, accelerator, parts.info, contents, agree)
    stragglers = Stragglers.start(accelerator, console, tracker, config.log_every, state.step)
    agreement = Agreement(accelerator, sums, tracker, stop, checkpoints, stragglers)
    return agreement
