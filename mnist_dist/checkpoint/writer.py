"""Checkpoints that resume exactly: written atomically, loaded without running any code.

    runs/<name>/checkpoints/
        step-000120/            one complete checkpoint
            model.safetensors   the unwrapped model's weights (safetensors: loading runs no code)
            best.safetensors    the weights of the best validation accuracy so far, once there is one
            training.pt         optimizer, lr-scheduler and grad-scaler states (loaded with weights_only=True)
            rank-0.pt ...       each rank's RNG states and running epoch sums (weights_only=True)
            state.json          step, epoch, position in the epoch, best accuracy, config, W&B run id
            COMPLETE            written last; a folder without it is ignored
        latest                  the name of the newest complete checkpoint

Accelerate's save_state is not used: it saves the DDP-wrapped model (keys prefixed `module.`)
and writes in place, while a checkpoint here must hold unwrapped weights and appear all at once.
"""

import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from mnist_dist.atomic import WriteFailed, write_atomically, writing
from mnist_dist.checkpoint.layout import COMPLETE, complete_checkpoints, newest_checkpoint, step_of
from mnist_dist.checkpoint.reader import (
    DamagedCheckpoint,
    Loaded,
    TrainingState,
    apply_checkpoint,
    read_checkpoint,
    rng_states,
)
from mnist_dist.checkpoint.weights import model_metadata, weights_bytes
from mnist_dist.config import Config
from mnist_dist.data.images import DatasetInfo
from mnist_dist.distributed import write_on_main
from mnist_dist.errors import Diverged, UserError


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


def torch_bytes(value) -> bytes:
    """torch.save into memory, so that the file is written by a plain write (see atomic.py)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class Checkpointer:
    """Decides when to save, saves in a coordinated way across ranks, and finds and loads what to resume.

    The trainer `attach`es what a checkpoint holds, asks `due(step, last_of_epoch)` after every
    optimizer step and `due(step, epoch_end=True)` after each epoch's evaluation, checks the run's
    health, and then calls `save_now()`.
    """

    def __init__(self, config: Config, accelerator: Accelerator, run_dir: Path | None, info: DatasetInfo | None = None):
        self.config = config
        self.accelerator = accelerator
        self.info = info  # the dataset's facts, for the weights' metadata (weights.py)
        self.enabled = config.writes_files and run_dir is not None  # a dry run writes no checkpoint, finds none
        self.folder = run_dir / "checkpoints" if self.enabled else None
        self.contents: Callable[[], tuple] | None = None

    def attach(self, module: torch.nn.Module, optimizer, scheduler, state: TrainingState, rank_state, best) -> None:
        """What `save_now` writes: the bare model (not DDP- or compile-wrapped), its optimizer and
        schedule, the training state, `rank_state()`, this rank's own state at the time of saving, and
        `best()`, the weights of the best validation accuracy so far (or None)."""
        self.contents = lambda: (state, module, optimizer, scheduler, rank_state(), best())

    def due(self, step: int, last_of_epoch: bool = False, epoch_end: bool = False) -> bool:
        """After a step: every `checkpoint_every` steps, except an epoch's last step when the epoch's end
        saves it (`checkpoint_epochs`), so no step is saved twice. At an epoch's end (after its
        evaluation): with `checkpoint_epochs`."""
        if epoch_end:
            return self.enabled and self.config.checkpoint_epochs
        every = self.config.checkpoint_every
        by_steps = every > 0 and step % every == 0
        return self.enabled and by_steps and not (last_of_epoch and self.config.checkpoint_epochs)

    def save_now(self) -> Path:
        """Save what the trainer attached, due or not (a stop signal asks for it)."""
        return self.save(*self.contents())

    def save(
        self, state: TrainingState, module: torch.nn.Module, optimizer, scheduler, rank_state: dict, best: dict | None
    ) -> Path:
        """Every rank calls this at the same step. Returns the new checkpoint's folder.

        Each rank writes its part into a hidden `.partial-step-N` folder; only when every rank
        succeeded does the main process mark it COMPLETE and rename it into place.
        """
        # Ranks hold identical weights, so each reaches the same verdict without a collective.
        if not torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all():  # one host sync
            raise Diverged(
                f"the weights became NaN or infinite by step {state.step}; "
                "no checkpoint was written for it. Lower --lr, or set --max-grad-norm."
            )
        final = self.folder / f"step-{state.step:06d}"
        partial = self.folder / f".partial-step-{state.step:06d}"
        failure = self._make_partial(partial)
        if failure is None:
            failure = self._write_parts(partial, state, module, optimizer, scheduler, rank_state, best)
        failures = [text for text in gather_object([failure]) if text]  # one collective: the ranks agree
        if failures:
            if self.accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)  # frees what it took
            self.accelerator.wait_for_everyone()  # all ranks leave together (see distributed.fail_together)
            raise WriteFailed(
                f"writing checkpoint {final} failed ({failures[0]}); the previous checkpoints are intact. "
                "Free space or fix permissions under --run-dir, then run the same command again to resume."
            )
        write_on_main(self.accelerator, lambda: self._publish(partial, final, keep_best=state.best_step))
        return final

    def _make_partial(self, partial: Path) -> str | None:
        """The main process makes the empty folder; every rank then checks it sees it. Returns a failure or None."""
        failure = None
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier save
            try:
                partial.mkdir(parents=True)
            except OSError as error:
                failure = f"{partial}: {error.strerror or error}"
        self.accelerator.wait_for_everyone()
        if failure is None and not partial.is_dir():
            rank = self.accelerator.process_index
            failure = f"{partial} is not visible on rank {rank}: the run directory must be shared by all nodes"
        return failure

    def _write_parts(self, partial: Path, state, module, optimizer, scheduler, rank_state, best) -> str | None:
        """This rank's file, and on the main process the shared ones. Returns a failure or None."""
        accelerator = self.accelerator
        files = {f"rank-{accelerator.process_index}.pt": lambda: torch_bytes({**rank_state, "rng": rng_states()})}
        if accelerator.is_main_process:
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else {}
            training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler}
            state_json = json.dumps({**asdict(state), "config": self.config.to_dict()}, indent=2)
            metadata = model_metadata(self.config, self.info, state.step)
            files |= {
                "model.safetensors": lambda: weights_bytes(module.state_dict(), metadata),
                "training.pt": lambda: torch_bytes(training),
                "state.json": lambda: state_json.encode(),
            }
            if best is not None:
                best_metadata = model_metadata(self.config, self.info, state.best_step)
                files["best.safetensors"] = lambda: weights_bytes(best, best_metadata)
        for name, content in files.items():
            try:
                (partial / name).write_bytes(content())
            except OSError as error:
                return f"{name}: {error.strerror or error}"
        return None

    def _publish(self, partial: Path, final: Path, keep_best: int) -> None:
        """Main process: mark the checkpoint complete, move it into place at once, prune the old ones."""
        with writing(final):
            (partial / COMPLETE).write_text("")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)  # the checkpoint appears all at once
        write_atomically(self.folder / "latest", final.name + "\n")
        self._prune(keep_best)

    def _prune(self, keep_best: int) -> None:
        """Delete all but the newest `keep_checkpoints` complete checkpoints and the best one."""
        complete = self.complete_checkpoints()
        keep = set(complete[-self.config.keep_checkpoints :])
        keep |= {path for path in complete if step_of(path) == keep_best}
        for path in complete:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.folder.glob(".partial-step-*"):  # left by saves that crashed
            shutil.rmtree(path, ignore_errors=True)

    def complete_checkpoints(self) -> list[Path]:
        return complete_checkpoints(self.folder)

    def what_is_kept(self, sentence: str) -> str:
        """`sentence` with the newest complete checkpoint in it, for a run that stops; or that there is none."""
        complete = self.complete_checkpoints()
        return sentence.format(complete[-1]) if complete else "no checkpoint was written"

    def find(self, resume: str) -> Path | None:
        """auto: the newest complete checkpoint of the run dir (or none); none; or a checkpoint folder."""
        candidates = self.candidates(resume)
        return candidates[0] if candidates else None

    def candidates(self, resume: str) -> list[Path]:
        """What --resume may continue from, the preferred first: auto, every complete checkpoint, newest
        first; a path, the checkpoint it names; none, nothing."""
        if resume == "none":
            return []
        if resume == "auto":
            return self.complete_checkpoints()[::-1]
        path = Path(resume)
        newest = newest_checkpoint(path)  # a run dir: its newest checkpoint
        if newest is not None:
            return [newest]
        if not (path / COMPLETE).is_file():
            raise UserError(
                f"--resume {resume}: no complete checkpoint there (a folder such as runs/NAME/checkpoints/"
                "step-000120 holding a COMPLETE file). Pass auto, none, or such a folder."
            )
        return [path]

    def resume(self, module: torch.nn.Module, optimizer, scheduler, say) -> Loaded | None:
        """Load the newest checkpoint that every rank can read (--resume auto skips a damaged one with a
        warning, leaving it on disk; a named one must load). Returns what it read (with its path, state,
        this rank's state and the best weights so far)."""
        strict = self.config.resume != "auto"
        for path in self.candidates(self.config.resume) if self.enabled else []:
            loaded, failure = None, None
            try:
                loaded = read_checkpoint(path, self.config, self.accelerator)
            except DamagedCheckpoint as error:
                failure = str(error)
            failures = [text for text in gather_object([failure]) if text]  # one collective: the ranks agree
            if failures and strict:
                self.accelerator.wait_for_everyone()  # all ranks leave together (see run.lock_run_dir)
                raise DamagedCheckpoint(failures[0])
            if failures:
                say(f"warning: skipping checkpoint {path}: {failures[0]}")
                continue
            apply_checkpoint(loaded, module, optimizer, scheduler, self.accelerator)
            return loaded
        return None

    def load(self, path: Path, module: torch.nn.Module, optimizer, scheduler) -> tuple[TrainingState, dict]:
        """Restore everything saved at `path`; returns the training state and this rank's saved state."""
        loaded = read_checkpoint(path, self.config, self.accelerator)
        apply_checkpoint(loaded, module, optimizer, scheduler, self.accelerator)
        return loaded.state, loaded.rank_state
