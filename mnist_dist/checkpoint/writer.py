"""Writing checkpoints that resume exactly: when one is due, each rank's part, the whole published at
once, the old ones pruned. checkpoint/reader.py finds and loads them, running no code.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.optim.lr_scheduler import LRScheduler

from mnist_dist.atomic import WriteFailed, write_atomically, writing
from mnist_dist.checkpoint.layout import COMPLETE, complete_checkpoints, step_of
from mnist_dist.checkpoint.state import TrainingState, rng_states
from mnist_dist.checkpoint.weights import model_metadata, weights_bytes
from mnist_dist.config import Config
from mnist_dist.data.images import DatasetInfo
from mnist_dist.distributed import write_on_main
from mnist_dist.errors import Diverged


def torch_bytes(value) -> bytes:
    """torch.save into memory, so that the file is written by a plain write (see atomic.py)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@dataclass
class Contents:
    """What a checkpoint holds: the trainer's own objects, read at each save."""

    state: TrainingState
    module: torch.nn.Module  # the bare model, not DDP- or compile-wrapped: its keys have no "module." prefix
    optimizer: torch.optim.Optimizer  # the one whose state is saved (Accelerate's wrapper, where it made one)
    scheduler: LRScheduler
    rank_state: Callable[[], dict]  # this rank's own state at the time of saving (its epoch sums)
    best: Callable[[], dict | None]  # the weights of the best validation accuracy so far, or None


class CheckpointWriter:
    """Decides when to save, and saves: every rank writes its part, then the main process publishes
    the checkpoint whole and prunes the old ones.

    The trainer calls `save_if_due` after every optimizer step and after each epoch's evaluation; the
    ranks' agreement to stop on a signal calls `save`. A dry run writes no checkpoint.
    """

    def __init__(
        self,
        config: Config,
        accelerator: Accelerator,
        info: DatasetInfo,
        contents: Contents,
        agree: Callable[[int], None],
    ):
        self.config = config
        self.accelerator = accelerator
        self.info = info  # the dataset's facts, for the weights' metadata (checkpoint/weights.py)
        self.contents = contents
        # Called with the step before each save that is due: the ranks agree that no loss became NaN
        # and no metrics row was lost, so that no checkpoint holds a diverged run or misses a row.
        self.agree = agree
        self.folder = config.run_path / "checkpoints" if config.writes_files else None

    def due(self, step: int, last_of_epoch: bool = False, epoch_end: bool = False) -> bool:
        """After a step: every `checkpoint_every` steps, except an epoch's last step when the epoch's end
        saves it (`checkpoint_epochs`), so no step is saved twice. At an epoch's end (after its
        evaluation): with `checkpoint_epochs`. Never in a dry run."""
        if self.folder is None:
            return False
        if epoch_end:
            return self.config.checkpoint_epochs
        every = self.config.checkpoint_every
        return every > 0 and step % every == 0 and not (last_of_epoch and self.config.checkpoint_epochs)

    def save_if_due(self, step: int, last_of_epoch: bool = False, epoch_end: bool = False) -> Path | None:
        """Save when `due`, after the ranks' agreement; returns the new checkpoint's folder, or None."""
        if not self.due(step, last_of_epoch, epoch_end):
            return None
        self.agree(step)
        return self.save()

    def save(self) -> Path | None:
        """Save now, due or not (a stop signal asks for it); every rank calls this at the same step.
        Returns the new checkpoint's folder, or None in a dry run.

        Each rank writes its part into a hidden `.partial-step-N` folder; only when every rank
        succeeded does the main process mark it COMPLETE and rename it into place.
        """
        if self.folder is None:
            return None
        contents, step = self.contents, self.contents.state.step
        # Ranks hold identical weights, so each reaches the same verdict without a collective.
        if not torch.stack([torch.isfinite(p).all() for p in contents.module.parameters()]).all():  # one host sync
            raise Diverged(
                f"the weights became NaN or infinite by step {step}; "
                "no checkpoint was written for it. Lower --lr, or set --max-grad-norm."
            )
        final = self.folder / f"step-{step:06d}"
        partial = self.folder / f".partial-step-{step:06d}"
        failure = self._make_partial(partial)
        if failure is None:
            failure = self._write_parts(partial, contents.rank_state(), contents.best())
        failures = [text for text in gather_object([failure]) if text]  # one collective: the ranks agree
        if failures:
            if self.accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)  # frees what it took
            self.accelerator.wait_for_everyone()  # all ranks leave together (see distributed.fail_together)
            raise WriteFailed(
                f"writing checkpoint {final} failed ({failures[0]}); the previous checkpoints are intact. "
                "Free space or fix permissions under --run-dir, then run the same command again to resume."
            )
        write_on_main(self.accelerator, lambda: self._publish(partial, final, keep_best=contents.state.best_step))
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

    def _write_parts(self, partial: Path, rank_state: dict, best: dict | None) -> str | None:
        """This rank's file, and on the main process the shared ones. Returns a failure or None."""
        accelerator, state = self.accelerator, self.contents.state
        files = {f"rank-{accelerator.process_index}.pt": lambda: torch_bytes({**rank_state, "rng": rng_states()})}
        if accelerator.is_main_process:
            files |= self._shared_files(state, best)
        for name, content in files.items():
            try:
                (partial / name).write_bytes(content())
            except OSError as error:
                return f"{name}: {error.strerror or error}"
        return None

    def _shared_files(self, state: TrainingState, best: dict | None) -> dict[str, Callable[[], bytes]]:
        """The main process's files, each made only when written: weights, training states, state.json."""
        contents, scaler = self.contents, self.accelerator.scaler
        training = {
            "optimizer": contents.optimizer.state_dict(),
            "scheduler": contents.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
        }
        state_json = json.dumps({**asdict(state), "config": self.config.to_dict()}, indent=2)
        metadata = model_metadata(self.config, self.info, state.step)
        files = {
            "model.safetensors": lambda: weights_bytes(contents.module.state_dict(), metadata),
            "training.pt": lambda: torch_bytes(training),
            "state.json": lambda: state_json.encode(),
        }
        if best is not None:
            best_metadata = model_metadata(self.config, self.info, state.best_step)
            files["best.safetensors"] = lambda: weights_bytes(best, best_metadata)
        return files

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
        complete = complete_checkpoints(self.folder)
        keep = set(complete[-self.config.keep_checkpoints :])
        keep |= {path for path in complete if step_of(path) == keep_best}
        for path in complete:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.folder.glob(".partial-step-*"):  # left by saves that crashed
            shutil.rmtree(path, ignore_errors=True)

    def what_is_kept(self, sentence: str) -> str:
        """`sentence` with the newest complete checkpoint in it, for a run that stops; or that there is none."""
        complete = complete_checkpoints(self.folder)
        return sentence.format(complete[-1]) if complete else "no checkpoint was written"
