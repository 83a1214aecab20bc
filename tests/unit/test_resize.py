"""Resuming on another number of processes (checkpoint/resize.py): the global batch kept, the position in the
epoch carried over, the ranks' epoch sums merged; and the premise, that an optimizer step trains the same
samples on any number of processes."""

import pytest
import torch

from mnist_dist.checkpoint.resize import GlobalBatchCannotBeKept, Layout, convert_state, keep_global_batch, merged_sums
from mnist_dist.checkpoint.state import TrainingState
from mnist_dist.checkpoint.trust import epoch_sums_mismatch
from mnist_dist.data.images import ImageSet
from mnist_dist.data.sharding import train_indices, train_sampler


def samples_of_each_step(samples: int, layout: Layout, epoch: int = 3) -> list[set[int]]:
    """The samples each optimizer step of an epoch trains, over all ranks, as the trainer draws them."""
    dataset = ImageSet(torch.zeros(samples, 1, 2, 2, dtype=torch.uint8), torch.zeros(samples, dtype=torch.int64))
    ranks = [
        train_indices(train_sampler(dataset, rank, layout.world_size, seed=7), epoch)
        for rank in range(layout.world_size)
    ]
    per_step = layout.batch_size * layout.grad_accum_steps  # on each rank
    steps = -(-len(ranks[0]) // per_step)
    return [set().union(*(indices[s * per_step : (s + 1) * per_step] for indices in ranks)) for s in range(steps)]


@pytest.mark.parametrize("samples", [1000, 1001, 18000])
def test_a_step_trains_the_same_samples_on_any_number_of_processes_but_an_epochs_last(samples):
    reference = samples_of_each_step(samples, Layout(2, 32, 1))
    for layout in (Layout(1, 64, 1), Layout(4, 16, 1), Layout(4, 8, 2), Layout(8, 4, 2)):
        steps = samples_of_each_step(samples, layout)
        assert len(steps) == len(reference) == -(-samples // 64)
        assert steps[:-1] == reference[:-1], layout  # the last, partial step: the sampler pads differently


def test_the_global_batch_is_kept_with_the_accumulation_where_it_divides():
    assert keep_global_batch(Layout(2, 32, 1), 1) == Layout(1, 64, 1)
    assert keep_global_batch(Layout(1, 32, 1), 2) == Layout(2, 16, 1)
    assert keep_global_batch(Layout(2, 16, 4), 4) == Layout(4, 8, 4)
    assert keep_global_batch(Layout(1, 8, 3), 6) == Layout(6, 2, 2)  # 24 = 6 x 2 x 2: the most accumulation that fits
    with pytest.raises(
        GlobalBatchCannotBeKept,
        match=r"global batch of 64 .* does not divide among 3 processes; "
        r"resume on 1, 2, 4, 8, 16, 32, 64 processes",
    ):
        keep_global_batch(Layout(2, 32, 1), 3)


def test_the_position_in_the_epoch_is_carried_over_in_the_new_batches():
    samples = 18000  # digits' training split: 282 steps of 64 (the last one partial)
    mid_epoch = TrainingState(step=282 + 100, epoch=1, batches_done=100, world_size=2)
    state = convert_state(mid_epoch, Layout(2, 32, 1), Layout(4, 8, 2), samples)
    assert (state.step, state.epoch, state.batches_done, state.world_size) == (382, 1, 200, 4)
    assert state.world_size_changes == [{"step": 382, "from": 2, "to": 4}]
    whole = TrainingState(step=282, epoch=0, batches_done=282, world_size=2)  # its last step, before the epoch's end
    assert convert_state(whole, Layout(2, 32, 1), Layout(1, 64, 1), samples).batches_done == 282


def test_rank_zero_takes_every_old_ranks_epoch_sums_and_the_others_start_from_zero():
    def sums(loss, correct, samples, row_loss, row_samples):
        values = {
            "loss": loss,
            "correct": correct,
            "samples": samples,
            "row_loss": row_loss,
            "row_samples": row_samples,
        }
        return {"epoch_sums": {name: torch.tensor(value) for name, value in values.items()}}

    old = [sums(10.0, 5, 20, 4.0, 8), sums(12.0, 6, 20, 5.0, 8)]
    merged = merged_sums(old, rank=0)
    assert {name: value.item() for name, value in merged.items()} == {
        "loss": 22.0,
        "correct": 11,
        "samples": 40,
        "row_loss": 16.0,
        "row_samples": 28,
    }  # rank 0's 6.0 of loss over 12 samples since its last row stay its interval
    assert all(value.item() == 0 for value in merged_sums(old[:1], rank=1).values())


def test_rank_zeros_merged_sums_pass_the_trust_check_of_the_next_checkpoints():
    """Resumed 2 -> 4 (batch 32 -> 16) after 100 batches: rank 0 holds both old ranks' 3,200 samples; 10 steps
    later its checkpoint holds 6,400 + 160 samples after 110 batches of 16 on each of 4 ranks: trusted."""
    each = {
        "loss": torch.tensor(3200.0, dtype=torch.float64),
        "correct": torch.tensor(2000),
        "samples": torch.tensor(3200),
    }
    state = convert_state(
        TrainingState(step=100, batches_done=100, world_size=2), Layout(2, 32, 1), Layout(4, 16, 1), 18000
    )
    sums = merged_sums([{"epoch_sums": each}, {"epoch_sums": each}], rank=0)
    sums["samples"] += 160
    later = TrainingState(step=110, batches_done=state.batches_done + 10, world_size=4)
    assert epoch_sums_mismatch(sums, later, batch_size=16) is None


def test_the_same_processes_with_another_split_of_the_global_batch_keep_their_place():
    """2 x 32 x 1 resumed as 2 x 16 x 2: the same samples a step, the batches done counted in the new split."""
    state = convert_state(
        TrainingState(step=50, batches_done=50, world_size=2), Layout(2, 32, 1), Layout(2, 16, 2), 18000
    )
    assert (state.step, state.batches_done, state.world_size_changes) == (50, 100, [])
