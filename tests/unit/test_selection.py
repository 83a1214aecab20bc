"""Model selection in one process: the best validation accuracy's weights are kept, early stopping
waits --early-stopping-patience epochs, and without a validation split the last weights are kept."""

import torch

from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.train.selection import ModelSelection


def evaluate(selection: ModelSelection, module: torch.nn.Module, step: int, accuracy: float) -> None:
    """An epoch that ends at `step`, its weights moved so that each epoch's differ."""
    with torch.no_grad():
        module.weight.fill_(step)
    selection.state.step, selection.state.epoch = step, step // 10 - 1  # 10 steps an epoch
    selection.after_evaluation(accuracy, module)


def test_the_best_weights_are_kept_not_the_last():
    module, state = torch.nn.Linear(2, 2), TrainingState()
    selection = ModelSelection(state, patience=0, on_validation=True)
    for step, accuracy in ((10, 0.8), (20, 0.9), (30, 0.85)):
        evaluate(selection, module, step, accuracy)
    assert (state.best_accuracy, state.best_step, state.epochs_since_best) == (0.9, 20, 1)
    assert selection.keep(module) == 20
    assert torch.all(module.weight == 20)


def test_the_last_weights_are_kept_when_they_are_the_best():
    module, state = torch.nn.Linear(2, 2), TrainingState()
    selection = ModelSelection(state, patience=0, on_validation=True)
    evaluate(selection, module, 10, 0.8)
    evaluate(selection, module, 20, 0.9)
    assert selection.keep(module) == 20 and torch.all(module.weight == 20)


def test_early_stopping_waits_patience_epochs_without_a_better_accuracy():
    module, state = torch.nn.Linear(2, 2), TrainingState()
    selection = ModelSelection(state, patience=2, on_validation=True)
    evaluate(selection, module, 10, 0.8)
    evaluate(selection, module, 20, 0.8)  # equal is not better
    assert not selection.stopped_early()
    evaluate(selection, module, 30, 0.81)  # better: the count starts again
    evaluate(selection, module, 40, 0.7)
    assert not selection.stopped_early()
    evaluate(selection, module, 50, 0.7)
    assert selection.stopped_early() and selection.keep(module) == 30


def test_no_patience_never_stops_early():
    module, state = torch.nn.Linear(2, 2), TrainingState()
    selection = ModelSelection(state, patience=0, on_validation=True)
    for step in range(10, 100, 10):
        evaluate(selection, module, step, 0.5)
    assert not selection.stopped_early()


def test_without_a_validation_split_the_last_weights_are_kept_and_nothing_stops_early():
    module, state = torch.nn.Linear(2, 2), TrainingState()
    selection = ModelSelection(state, patience=1, on_validation=False)  # epochs are evaluated on test
    evaluate(selection, module, 10, 0.9)
    evaluate(selection, module, 20, 0.5)
    assert (state.best_step, selection.best_weights) == (-1, None)
    assert not selection.stopped_early()
    assert selection.keep(module) == 20 and torch.all(module.weight == 20)


def test_a_resumed_run_keeps_the_best_weights_its_checkpoint_held():
    module = torch.nn.Linear(2, 2)
    best = {name: torch.full_like(value, 7.0) for name, value in module.state_dict().items()}
    state = TrainingState(step=30, best_accuracy=0.9, best_step=10, epochs_since_best=1)
    selection = ModelSelection(state, patience=0, on_validation=True, best=best)
    evaluate(selection, module, 40, 0.85)
    assert selection.keep(module) == 10 and torch.all(module.weight == 7.0)


def test_early_stopping_counts_epochs_when_only_some_are_evaluated():
    module, state = torch.nn.Linear(2, 2), TrainingState()
    selection = ModelSelection(state, patience=6, on_validation=True)  # --val-every 4: evaluated at 4, 8, 12
    for epoch in (3, 7):  # 0-based: the 4th and the 8th
        state.epoch = epoch
        selection.after_evaluation(0.8, module)
    assert state.epochs_since_best == 4 and not selection.stopped_early()
    state.epoch = 11
    selection.after_evaluation(0.7, module)
    assert state.epochs_since_best == 8 and selection.stopped_early()
