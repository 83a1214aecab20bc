"""When the checkpoint writer saves: --checkpoint-every steps, --checkpoint-epochs at each epoch's end
(an epoch's last step saved once, by the epoch's end), never in a dry run, and always after the ranks
agreed that the run is healthy. Only the config decides: no process, model or file is needed."""

import pytest

from mnist_dist.checkpoint.writer import CheckpointWriter
from mnist_dist.config import make_config


class RecordingWriter(CheckpointWriter):
    """Records the ranks' agreement and its saves instead of writing: the timing needs only the config."""

    def __init__(self, tmp_path, **options):
        config = make_config({"run_dir": str(tmp_path), **options})
        super().__init__(config, accelerator=None, info=None, contents=None, agree=self.record_agreement)
        self.events = []

    def record_agreement(self, step: int) -> None:
        self.events.append(("agree", step))

    def save(self):
        self.events.append("save")
        return self.folder / "saved"


def steps_saved(checkpoints: CheckpointWriter, steps: range, last_of_epoch: int) -> list[int]:
    return [step for step in steps if checkpoints.due(step, last_of_epoch=step == last_of_epoch)]


def test_checkpoint_every_saves_each_multiple_of_its_steps(tmp_path):
    checkpoints = RecordingWriter(tmp_path, checkpoint_every=5, checkpoint_epochs=False)
    assert steps_saved(checkpoints, range(1, 13), last_of_epoch=12) == [5, 10]
    assert not checkpoints.due(12, epoch_end=True)


def test_by_default_only_each_epochs_end_saves(tmp_path):
    checkpoints = RecordingWriter(tmp_path)  # --checkpoint-every 0, --checkpoint-epochs
    assert steps_saved(checkpoints, range(1, 31), last_of_epoch=30) == []
    assert checkpoints.due(30, epoch_end=True)


def test_an_epochs_last_step_is_saved_once_by_the_epochs_end(tmp_path):
    checkpoints = RecordingWriter(tmp_path, checkpoint_every=5)
    assert steps_saved(checkpoints, range(1, 11), last_of_epoch=10) == [5]  # step 10: the epoch's end saves it
    assert checkpoints.due(10, epoch_end=True)


def test_without_checkpoint_epochs_an_epochs_last_step_is_saved_as_a_step(tmp_path):
    checkpoints = RecordingWriter(tmp_path, checkpoint_every=5, checkpoint_epochs=False)
    assert checkpoints.due(10, last_of_epoch=True)


@pytest.mark.parametrize("options", [{}, {"checkpoint_every": 1}])
def test_a_dry_run_never_saves(tmp_path, options):
    config = make_config({"run_dir": str(tmp_path), "dry_run": True, **options})
    checkpoints = CheckpointWriter(config, accelerator=None, info=None, contents=None, agree=lambda step: None)
    assert not any(checkpoints.due(step) or checkpoints.due(step, epoch_end=True) for step in range(1, 20))
    assert checkpoints.save_if_due(10, epoch_end=True) is None and checkpoints.save() is None


def test_a_due_save_follows_the_ranks_agreement_and_one_not_due_does_neither(tmp_path):
    checkpoints = RecordingWriter(tmp_path, checkpoint_every=5)
    assert checkpoints.save_if_due(4) is None
    assert checkpoints.save_if_due(5) == checkpoints.folder / "saved"
    assert checkpoints.save_if_due(7, epoch_end=True) == checkpoints.folder / "saved"
    assert checkpoints.events == [("agree", 5), "save", ("agree", 7), "save"]
