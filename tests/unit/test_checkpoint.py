"""Checkpoints in one process, written by the writer and resumed by the reader: what is kept, what is
refused, what a failed save leaves, and what --resume auto does with a damaged checkpoint."""

import dataclasses
import errno
import random
import shutil

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from mnist_dist.checkpoint import writer
from mnist_dist.checkpoint.layout import complete_checkpoints
from mnist_dist.checkpoint.reader import DamagedCheckpoint, Target, candidates, resume, state_from_json
from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.checkpoint.trust import NothingToResume
from mnist_dist.checkpoint.writer import CheckpointWriter, Contents
from mnist_dist.config import make_config
from mnist_dist.errors import UserError

BATCH, BATCHES_PER_EPOCH = 4, 1000  # the plan a Run's checkpoints must fit


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


class Run:
    """A tiny model, its optimizer and schedule, and a writer of their checkpoints."""

    def __init__(self, accelerator: Accelerator, tmp_path, **options):
        self.config = make_config(
            {"keep_checkpoints": 2, "model": "linear", "batch_size": BATCH, "run_dir": str(tmp_path), **options}
        )
        self.accelerator = accelerator
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2)
        self.state = TrainingState()
        contents = Contents(self.state, self.model, self.optimizer, self.scheduler, self.rank_state, self.best)
        self.writer = CheckpointWriter(self.config, accelerator, None, contents, agree=lambda step: None)
        self.folder = tmp_path / "checkpoints"

    def rank_state(self) -> dict:
        """A rank's running sums as the trainer keeps them: BATCH samples a step, each of loss 1."""
        samples = self.state.batches_done * BATCH
        as_sums = {"loss": torch.tensor(float(samples), dtype=torch.float64), "correct": torch.tensor(0)}
        return {"epoch_sums": {**as_sums, "samples": torch.tensor(samples)}}

    def best(self) -> dict | None:
        return self.model.state_dict() if self.state.best_step >= 0 else None  # a best accuracy comes with its weights

    def save(self, step: int, best_step: int = -1):
        """A checkpoint after `step` steps of one long epoch (a batch a step)."""
        self.state.step, self.state.batches_done, self.state.best_step = step, step, best_step
        return self.writer.save()

    def resume(self, where: str, say=print, **options):
        """Resume this run's model, optimizer and schedule as --resume `where` does, with `options` changed."""
        config = dataclasses.replace(self.config, resume=where, **options)
        target = Target(self.model, self.optimizer, self.scheduler, train_samples=BATCHES_PER_EPOCH * BATCH)
        return resume(config, self.accelerator, target, say)


@pytest.fixture
def run(accelerator, tmp_path):
    return Run(accelerator, tmp_path)


def test_auto_resume_takes_the_newest_complete_checkpoint(run, tmp_path):
    older = run.save(10)
    newest = run.save(20)
    (run.folder / ".partial-step-000030").mkdir()  # a crash in the middle of a save
    (run.folder / "step-000040").mkdir()  # no COMPLETE marker
    assert candidates(run.config) == [newest, older]
    assert candidates(dataclasses.replace(run.config, resume=str(tmp_path))) == [newest]  # a run dir
    assert (run.folder / "latest").read_text().strip() == "step-000020"
    assert candidates(dataclasses.replace(run.config, resume="none")) == []


def test_keeps_the_newest_and_the_best(run):
    for step in (10, 20, 30, 40):
        run.save(step, best_step=10)
    assert [path.name for path in complete_checkpoints(run.folder)] == ["step-000010", "step-000030", "step-000040"]


def test_resume_restores_weights_optimizer_schedule_and_rng(run):
    run.model(torch.randn(4, 3)).sum().backward()
    run.optimizer.step()
    run.scheduler.step()
    path = run.save(7)
    expected_weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    expected_draws = (random.random(), torch.rand(3))
    with torch.no_grad():
        run.model.weight.add_(1.0)
    run.scheduler.step()
    loaded = run.resume(str(path))
    assert (
        loaded.path == path and loaded.state.step == 7 and loaded.rank_state["epoch_sums"]["loss"].item() == 7.0 * BATCH
    )
    assert all(torch.equal(run.model.state_dict()[k], v) for k, v in expected_weights.items())
    assert run.scheduler.last_epoch == 1
    assert (random.random(), *torch.rand(3).tolist()) == (expected_draws[0], *expected_draws[1].tolist())


def test_resume_keeps_this_runs_optimizer_kernels(run, accelerator):
    """A checkpoint of a non-fused optimizer resumes fused here (load_state_dict would copy the flag)."""
    run.model(torch.randn(4, 3)).sum().backward()
    run.optimizer.step()
    path = run.save(3)  # written by the fixture's plain SGD: fused=None
    written = run.optimizer
    run.optimizer = accelerator.prepare(torch.optim.SGD(run.model.parameters(), lr=0.1, momentum=0.9, fused=True))
    run.scheduler = torch.optim.lr_scheduler.StepLR(run.optimizer, step_size=2)
    run.resume(str(path))
    assert run.optimizer.param_groups[0]["fused"] is True
    assert torch.equal(
        run.optimizer.state_dict()["state"][0]["momentum_buffer"], written.state_dict()["state"][0]["momentum_buffer"]
    )


def test_a_failed_write_leaves_the_previous_checkpoint_intact(run, monkeypatch):
    good = run.save(10)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "weights_bytes", disk_full)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoints are intact"):
        run.save(20)
    assert candidates(run.config) == [good]
    assert (run.folder / "latest").read_text().strip() == good.name
    assert not list(run.folder.glob(".partial-*"))
    monkeypatch.undo()
    assert run.resume("auto").state.step == 10


def test_auto_resume_falls_back_on_a_damaged_checkpoint_and_a_named_one_must_load(run):
    good = run.save(10)
    damaged = run.save(20)
    (damaged / "training.pt").unlink()  # a file lost after the save
    said = []
    assert run.resume("auto", say=said.append).path == good
    assert len(said) == 1 and said[0].startswith(f"warning: skipping checkpoint {damaged}: ")
    assert "training.pt is unreadable" in said[0] and damaged.is_dir()  # left on disk
    with pytest.raises(DamagedCheckpoint, match="unreadable"):
        run.resume(str(damaged))


def test_a_path_without_a_complete_checkpoint_is_refused(run, tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint there"):
        candidates(dataclasses.replace(run.config, resume=str(tmp_path / "nowhere")))


@pytest.mark.parametrize(
    "saved, edited, error, message",
    [
        ('"epochs_since_best": 0', '"epochs_since_best": -1', DamagedCheckpoint, "no valid state.json.*is -1"),
        ('"world_size": 1', '"world_size": 4', UserError, "global batch of 16 .4 processes x 4 x 1 accumulated"),
        ('"step": 10', '"step": 999999', DamagedCheckpoint, "says step 999999, its folder step-000010"),
        ('"batches_done": 10', '"batches_done": 100000', DamagedCheckpoint, "batches_done is 100000, an epoch has"),
        ('"epoch": 0', '"epoch": 50', DamagedCheckpoint, "step 10 does not follow from epoch 50"),
        ('"best_step": -1', '"best_step": 11', DamagedCheckpoint, "best_step 11 lies after step 10"),
    ],
    ids=["a negative counter", "another world size", "a step", "batches done", "an epoch", "a best step"],
)
def test_an_edited_state_json_is_refused(run, saved, edited, error, message):
    path = run.save(10)
    state_file = path / "state.json"
    state_file.write_text(state_file.read_text().replace(saved, edited))
    with pytest.raises(error, match=message):
        run.resume(str(path))


def test_the_state_json_of_an_earlier_version_loads_with_its_later_fields_filled_in():
    written = {**dataclasses.asdict(TrainingState(step=30, epoch=3, evaluated_step=30)), "epochs_since_best": 1}
    for later in ("world_size_changes", "evaluated_epochs"):  # fields added since: absent there
        del written[later]
    state = state_from_json(written)
    # Every epoch was evaluated then: the last evaluation ended the last whole epoch.
    assert (state.world_size_changes, state.evaluated_epochs, state.epochs_since_best) == ([], 3, 1)


def test_a_onecycle_run_cannot_be_stretched_on_resume(accelerator, tmp_path):
    run = Run(accelerator, tmp_path, schedule="onecycle")
    path = run.save(10)
    with pytest.raises(
        UserError, match="written with epochs=3, this run has 9; the onecycle schedule cannot be stretched"
    ):
        run.resume(str(path), epochs=9)


def test_a_dry_run_writes_and_resumes_nothing(accelerator, tmp_path):
    run = Run(accelerator, tmp_path, dry_run=True)
    assert run.save(10) is None and not run.folder.exists()
    assert run.resume("auto") is None


def test_a_checkpoint_of_other_weights_sums_or_rng_is_skipped_for_the_one_before(run, accelerator, tmp_path):
    """A newest checkpoint whose files load but do not fit this run is damage: --resume auto takes the older one."""
    good = run.save(10)
    damages = {
        "another model's weights": lambda path: save_file({"weight": torch.zeros(5, 5)}, path / "model.safetensors"),
        "bad epoch_sums": lambda path: torch.save({"rng": {}, "epoch_sums": [1, 2]}, path / "rank-0.pt"),
        "rng states that cannot be set": lambda path: torch.save(
            {**torch.load(path / "rank-0.pt"), "rng": {"python": 1}}, path / "rank-0.pt"
        ),
    }
    for why, damage in damages.items():
        newest = run.save(20)
        damage(newest)
        said = []
        assert run.resume("auto", say=said.append).path == good, why
        assert len(said) == 1 and "cannot be trusted" in said[0], (why, said)
        shutil.rmtree(newest)


def test_folders_that_are_not_checkpoints_are_ignored(run):
    good = run.save(10)
    shutil.copytree(good, run.folder / "step-000280-copy")  # a user's backup beside the checkpoints
    assert candidates(run.config) == [good] and run.resume("auto").path == good


@pytest.mark.parametrize("evidence", ["summary.json", "checkpoints link", "damaged checkpoints", "metrics rows"])
def test_a_run_that_trained_before_and_has_no_checkpoint_is_refused(run, tmp_path, evidence):
    """--resume auto on a folder with records of training and no checkpoint to continue from (a purged
    scratch, an unmounted checkpoints/) refuses, naming what it found; a folder without records starts."""
    assert run.resume("auto") is None  # nothing there: a new run
    (tmp_path / "metrics.jsonl").write_text('{"type": "step", "step": 2}\n')  # before any checkpoint was due
    assert run.resume("auto") is None
    if evidence == "summary.json":
        (tmp_path / "summary.json").write_text("{}")
    elif evidence == "checkpoints link":
        (tmp_path / "checkpoints").symlink_to(tmp_path / "unmounted")
    elif evidence == "damaged checkpoints":
        (run.save(10) / "state.json").write_text("{")
    else:  # a checkpoint every epoch of 1000 steps: a row after step 1000 means one was written
        (tmp_path / "metrics.jsonl").write_text('{"type": "step", "step": 1001}\n')
    before = sorted((path.name, path.stat(follow_symlinks=False).st_mtime_ns) for path in tmp_path.rglob("*"))
    with pytest.raises(NothingToResume, match="has trained before .* no checkpoint to resume from.*--resume none"):
        run.resume("auto", say=lambda line: None)
    assert sorted((path.name, path.stat(follow_symlinks=False).st_mtime_ns) for path in tmp_path.rglob("*")) == before
