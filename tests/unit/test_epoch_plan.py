"""The run's length and each epoch's plan, from counts alone: a fresh run, a run resumed inside an
epoch, --max-steps inside an epoch, and gradient accumulation."""

from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.config import make_config
from mnist_dist.train.plan import EpochPlan, RunLength, finished
from mnist_dist.train.selection import ModelSelection


def length(batches_per_epoch: int, **options) -> RunLength:
    return RunLength.of(make_config({"epochs": 3, **options}), batches_per_epoch)


def test_a_fresh_run_plans_every_step_of_its_first_epoch():
    run = length(10)
    assert (run.steps_per_epoch, run.total_steps) == (10, 30)
    assert run.plan_epoch(TrainingState()) == EpochPlan(epoch=0, skip_batches=0, first_step=1, last_step=10)


def test_a_run_resumed_inside_an_epoch_goes_on_where_it_stopped():
    state = TrainingState(step=14, epoch=1, batches_done=4)  # 10 steps of epoch 0, then 4 of epoch 1
    assert length(10).plan_epoch(state) == EpochPlan(epoch=1, skip_batches=4, first_step=5, last_step=10)


def test_max_steps_inside_an_epoch_ends_it_early_and_ends_the_run():
    run = length(10, max_steps=15)
    assert run.total_steps == 15
    assert run.plan_epoch(TrainingState(step=10, epoch=1)) == EpochPlan(1, 0, first_step=1, last_step=5)
    assert not run.reached(TrainingState(step=14, epoch=1, batches_done=4))
    assert run.reached(TrainingState(step=15, epoch=1, batches_done=5))  # inside epoch 1, yet over


def test_max_steps_beyond_the_epochs_changes_nothing():
    assert length(10, max_steps=100).total_steps == 30


def test_gradient_accumulation_counts_optimizer_steps_and_a_short_last_group():
    run = length(10, grad_accum_steps=4)  # groups of 4, 4 and 2 batches
    assert (run.steps_per_epoch, run.total_steps) == (3, 9)
    state = TrainingState(step=5, epoch=1, batches_done=8)  # two groups of epoch 1 trained
    assert run.plan_epoch(state) == EpochPlan(epoch=1, skip_batches=8, first_step=3, last_step=3)


def test_the_run_is_finished_after_its_epochs_or_by_early_stopping():
    run, patience = length(10), 2
    state = TrainingState(step=20, epoch=2)
    selection = ModelSelection(state, patience, on_validation=True)
    assert not finished(run, state, selection)
    state.epochs_since_best = patience
    assert finished(run, state, selection)
    assert finished(run, TrainingState(step=30, epoch=3), ModelSelection(TrainingState(), 0, True))


def test_val_every_evaluates_every_nth_epoch_and_the_last():
    run = length(10, epochs=10, val_every=4)
    evaluated = [epoch + 1 for epoch in range(10) if run.evaluates(TrainingState(step=10 * (epoch + 1), epoch=epoch))]
    assert evaluated == [4, 8, 10]
    assert all(length(10).evaluates(TrainingState(step=10 * (epoch + 1), epoch=epoch)) for epoch in range(3))


def test_val_every_evaluates_where_max_steps_ends_the_run():
    run = length(10, epochs=10, val_every=4, max_steps=15)
    assert not run.evaluates(TrainingState(step=10, epoch=0))
    assert run.evaluates(TrainingState(step=15, epoch=1, batches_done=5))  # inside epoch 1: the run's last step
