"""Checkpoints in one process, written by the writer and resumed by the reader: what is kept, what is
refused, what a failed save leaves, and what --resume auto does with a damaged checkpoint."""

import dataclasses
import errno
import random

import pytest
import torch
from accelerate import Accelerator

from mnist_dist.checkpoint import writer
from mnist_dist.checkpoint.layout import complete_checkpoints
from mnist_dist.checkpoint.reader import DamagedCheckpoint, candidates, resume
from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.checkpoint.writer import CheckpointWriter, Contents
from mnist_dist.config import make_config
from mnist_dist.errors import UserError


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


class Run:
    """A tiny model, its optimizer and schedule, and a writer of their checkpoints."""

    def __init__(self, accelerator: Accelerator, tmp_path, **options):
        self.config = make_config({"keep_checkpoints": 2, "model": "linear", "run_dir": str(tmp_path), **options})
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
        return {"epoch_sums": {"loss": torch.tensor(float(self.state.step))}}

    def best(self) -> dict | None:
        return self.model.state_dict() if self.state.best_step >= 0 else None  # a best accuracy comes with its weights

    def save(self, step: int, best_step: int = -1):
        self.state.step, self.state.best_step = step, best_step
        return self.writer.save()

    def resume(self, where: str, say=print, **options):
        """Resume this run's model, optimizer and schedule as --resume `where` does, with `options` changed."""
        config = dataclasses.replace(self.config, resume=where, **options)
        return resume(config, self.accelerator, self.model, self.optimizer, self.scheduler, say)


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
    assert loaded.path == path and loaded.state.step == 7 and loaded.rank_state["epoch_sums"]["loss"].item() == 7.0
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
        ('"batches_done": 0', '"batches_done": -1', DamagedCheckpoint, "no valid state.json.*batches_done is -1"),
        ('"world_size": 1', '"world_size": 4', UserError, "written by 4 processes"),
    ],
    ids=["a negative counter is damage", "another world size is refused"],
)
def test_an_edited_state_json_is_refused(run, saved, edited, error, message):
    path = run.save(10)
    state_file = path / "state.json"
    state_file.write_text(state_file.read_text().replace(saved, edited))
    with pytest.raises(error, match=message):
        run.resume(str(path))


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
