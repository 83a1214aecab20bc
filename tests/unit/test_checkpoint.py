"""The checkpointer in one process: what it keeps, what it refuses, and what a failed save leaves."""

import errno
import random

import pytest
import torch
from accelerate import Accelerator

from mnist_dist.checkpoint import writer as checkpoint
from mnist_dist.checkpoint.writer import Checkpointer, TrainingState
from mnist_dist.config import make_config
from mnist_dist.errors import UserError


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


@pytest.fixture
def parts(accelerator, tmp_path):
    config = make_config({"keep_checkpoints": 2, "model": "linear", "run_dir": str(tmp_path)})
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    return Checkpointer(config, accelerator, tmp_path), model, optimizer, scheduler


def save(parts, step, best_step=-1):
    checkpointer, model, optimizer, scheduler = parts
    state = TrainingState(step=step, best_step=best_step)
    sums = {"epoch_sums": {"loss": torch.tensor(float(step))}}
    best = model.state_dict() if best_step >= 0 else None  # a best accuracy comes with its weights
    return checkpointer.save(state, model, optimizer, scheduler, sums, best)


def test_auto_resume_takes_the_newest_complete_checkpoint(parts):
    checkpointer = parts[0]
    save(parts, 10)
    newest = save(parts, 20)
    (checkpointer.folder / ".partial-step-000030").mkdir()  # a crash in the middle of a save
    (checkpointer.folder / "step-000040").mkdir()  # no COMPLETE marker
    assert checkpointer.find("auto") == newest
    assert checkpointer.find(str(checkpointer.folder.parent)) == newest  # a run dir
    assert (checkpointer.folder / "latest").read_text().strip() == "step-000020"
    assert checkpointer.find("none") is None


def test_keeps_the_newest_and_the_best(parts):
    for step in (10, 20, 30, 40):
        save(parts, step, best_step=10)
    assert [path.name for path in parts[0].complete_checkpoints()] == ["step-000010", "step-000030", "step-000040"]


def test_load_restores_weights_optimizer_schedule_and_rng(parts):
    checkpointer, model, optimizer, scheduler = parts
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    path = save(parts, 7)
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_draws = (random.random(), torch.rand(3))
    with torch.no_grad():
        model.weight.add_(1.0)
    scheduler.step()
    state, rank_state = checkpointer.load(path, model, optimizer, scheduler)
    assert state.step == 7 and rank_state["epoch_sums"]["loss"].item() == 7.0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected_weights.items())
    assert scheduler.last_epoch == 1
    assert (random.random(), *torch.rand(3).tolist()) == (expected_draws[0], *expected_draws[1].tolist())


def test_load_keeps_this_runs_optimizer_kernels(parts, accelerator):
    """A checkpoint of a non-fused optimizer resumes fused here (load_state_dict would copy the flag)."""
    checkpointer, model, optimizer, scheduler = parts
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = save(parts, 3)  # written by the fixture's plain SGD: fused=None
    fused = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True))
    checkpointer.load(path, model, fused, torch.optim.lr_scheduler.StepLR(fused, step_size=2))
    assert fused.param_groups[0]["fused"] is True
    assert torch.equal(
        fused.state_dict()["state"][0]["momentum_buffer"], optimizer.state_dict()["state"][0]["momentum_buffer"]
    )


def test_a_failed_write_leaves_the_previous_checkpoint_intact(parts, monkeypatch):
    checkpointer = parts[0]
    good = save(parts, 10)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "weights_bytes", disk_full)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoints are intact"):
        save(parts, 20)
    assert checkpointer.find("auto") == good
    assert (checkpointer.folder / "latest").read_text().strip() == good.name
    assert not list(checkpointer.folder.glob(".partial-*"))
    monkeypatch.undo()
    checkpointer.load(good, *parts[1:])


def test_a_path_without_a_complete_checkpoint_is_refused(parts, tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint there"):
        parts[0].find(str(tmp_path / "nowhere"))


def test_world_size_change_is_refused(parts):
    path = save(parts, 10)
    state_file = path / "state.json"
    state_file.write_text(state_file.read_text().replace('"world_size": 1', '"world_size": 4'))
    with pytest.raises(UserError, match="written by 4 processes"):
        parts[0].load(path, *parts[1:])


def test_a_onecycle_run_cannot_be_stretched_on_resume(parts, accelerator):
    checkpointer, model, optimizer, scheduler = parts
    checkpointer.config.schedule = "onecycle"
    path = save(parts, 10)
    longer = Checkpointer(
        make_config({**checkpointer.config.to_dict(), "epochs": 9}), accelerator, checkpointer.folder.parent
    )
    with pytest.raises(
        UserError, match="written with epochs=3, this run has 9; the onecycle schedule cannot be stretched"
    ):
        longer.load(path, model, optimizer, scheduler)
