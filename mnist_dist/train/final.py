"""A run's end, once Trainer.fit has returned: the kept weights tested once; model.safetensors,
last.safetensors and summary.json written; the results printed and sent to W&B, with its confusion
matrix and predictions table; then what the run wrote and the commands to run next. None of these is
a checkpoint: a run resumes from checkpoints/ only.
"""

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mnist_dist.atomic import write_atomically
from mnist_dist.checkpoint.reader import PLANNED_SCHEDULES
from mnist_dist.checkpoint.weights import cpu_weights, model_metadata, weights_bytes
from mnist_dist.config import Config
from mnist_dist.data.images import DatasetInfo
from mnist_dist.distributed import fail_together, write_on_main
from mnist_dist.evaluate.exact import EvalResult
from mnist_dist.train.results import final_results

if TYPE_CHECKING:
    from mnist_dist.train.loop import Trainer


def finish(trainer: "Trainer", evaluation: EvalResult, seconds: float) -> dict:
    """Test the kept weights; write them, the last (`evaluation`'s) and summary.json; print and send the
    results. `seconds`: how long fit() took. Returns the results (summary.json's)."""
    started = time.perf_counter()
    fail_together(trainer.accelerator, trainer.tracker.failure)  # a row lost since the ranks' last agreement
    module, splits, config = trainer.module, trainer.splits, trainer.config
    last = cpu_weights(module)
    kept_step = trainer.selection.keep(module)
    test = splits.evaluate(module, test=True) if splits.held_out else evaluation
    steps_per_epoch = trainer.length.steps_per_epoch
    ranks = trainer.agreement.stragglers.summary()
    overall = trainer.time_split.samples_per_second  # this job's training speed, all processes
    utilization = trainer.utilization.summary(overall)
    trainer.time_split.end = time.perf_counter() - started
    speed = {**utilization, "time_split": trainer.time_split.as_dict(seconds)}
    results = final_results(
        trainer.state, evaluation, test, kept_step, seconds, trainer.facts, steps_per_epoch, ranks, speed
    )
    save_final(trainer.accelerator, config, trainer.info, results, kept=module.state_dict(), last=last)
    trainer.console.summary(results, config.run_dir if config.writes_files else None)
    trainer.tracker.summarize({**results, **({"samples_per_second": overall} if overall else {})})
    log_predictions(trainer, kept_step)
    if config.writes_files and trainer.accelerator.is_main_process:
        trainer.console.closing(
            config.run_dir, written_files(config.run_path), next_commands(config, wandb_folder(trainer))
        )
    return results


def save_final(
    accelerator: Accelerator, config: Config, info: DatasetInfo, results: dict, kept: dict, last: dict
) -> None:
    """The run's own files at its end (main process): model.safetensors (the `kept` weights, with the
    accuracies they reached), last.safetensors (the `last` weights), then summary.json (`results`),
    each atomic. A failed write ends every rank together; the same command then resumes from the last
    checkpoint."""
    if not config.writes_files:  # the same on every rank: no collective
        return
    commit = results.get("git_commit", "")
    reached = {"val": results.get("val_accuracy"), "test": results["test_accuracy"]}

    def write_all() -> None:
        kept_metadata = model_metadata(config, info, results["kept_step"], accuracies=reached, git_commit=commit)
        write_atomically(config.run_path / "model.safetensors", weights_bytes(kept, kept_metadata))
        last_metadata = model_metadata(config, info, results["steps"], git_commit=commit)
        write_atomically(config.run_path / "last.safetensors", weights_bytes(last, last_metadata))
        write_atomically(config.run_path / "summary.json", json.dumps(results, indent=2) + "\n")

    write_on_main(accelerator, write_all)


def log_predictions(trainer: "Trainer", kept_step: int) -> None:
    """W&B's confusion matrix and predictions table of the kept weights (of `kept_step`): one pass over
    the test set on every rank, if W&B is on."""
    if trainer.config.wandb == "disabled":  # every rank knows: no collective for nothing at the very end
        return
    wanted = [trainer.tracker.wants_predictions]
    broadcast_object_list(wanted)  # only the main process knows; a no-op in a single process
    if not wanted[0]:
        return
    predictions = trainer.splits.predict_test(trainer.module)
    if trainer.accelerator.is_main_process:
        images, names = trainer.splits.test_set.images, trainer.info.class_names
        trainer.tracker.log_results(predictions, images, names, trainer.state.step, kept_step)


# What a finished run's folder holds, in the order a user reaches for it (checkpoint/ and evaluate/ read them).
RUN_FILES = ("model.safetensors", "last.safetensors", "summary.json", "metrics.jsonl", "config.yaml", "checkpoints/")


def written_files(run_path: Path) -> list[str]:
    """The files of RUN_FILES that this run's folder holds (metrics.jsonl and checkpoints/ may be absent)."""
    return [name for name in RUN_FILES if (run_path / name.rstrip("/")).exists()]


def wandb_folder(trainer: "Trainer") -> str | None:
    """The folder of this run's offline W&B run, which `wandb sync` uploads; None when W&B is online or off."""
    session = trainer.tracker.wandb
    run = session.run if session is not None else None
    try:
        return str(Path(run.dir).parent) if run is not None and run.offline else None
    except Exception:  # W&B trouble never costs a run, not even its last lines
        return None


def next_commands(config: Config, wandb_folder: str | None) -> list[tuple[str, str]]:
    """(command, what it does) for a finished run: evaluate it, train further, upload its offline W&B run."""
    installed = Path(sys.argv[0]).name == "mnist-dist-train"  # the installed command, else train.py in a checkout
    evaluate = "mnist-dist-evaluate" if installed else "python evaluate.py"
    run_dir = config.run_dir
    commands = [(f"{evaluate} --checkpoint {run_dir}", f"the test report, with figures, into {run_dir}/eval/")]
    if (config.run_path / "checkpoints").is_dir():
        if config.schedule in PLANNED_SCHEDULES:  # a resume must keep --epochs and --max-steps (checkpoint/reader.py)
            more = f"the {config.schedule} schedule is planned for these steps: for more, a new --run-name"
        else:
            more = "with a higher --epochs or --max-steps it trains further"
        commands.append(("the same command", f"resumes after a stop (Ctrl-C, a signal); {more}"))
    if wandb_folder:
        commands.append((f"wandb sync {wandb_folder}", "uploads the offline W&B run"))
    return commands
