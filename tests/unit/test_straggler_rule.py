"""The per-rank step times (train/stragglers.py): what a rank measures, the rule that names a slow
rank, the "ranks" rows and summary.json's totals, and W&B's charts of them (tracking/rank_charts.py).
The gathering itself, on real processes: tests/integration/test_stragglers.py."""

import time

import pytest

from mnist_dist.tracking.rank_charts import MAX_POINTS, RankSeries
from mnist_dist.tracking.wandb_session import wandb_names
from mnist_dist.train.stragglers import FACTOR, FLOOR, PATIENCE, StepTimer, Stragglers, slow_parts


class Printed:
    def __init__(self):
        self.lines = []

    def print(self, line: str) -> None:
        self.lines.append(line)


class Rows:
    def __init__(self):
        self.rows = []

    def log(self, kind: str, step: int, row: dict) -> None:
        self.rows.append({"type": kind, "step": step, **row})


def stragglers(hosts=("node-a", "node-b"), log_every=10, step=0) -> Stragglers:
    return Stragglers(StepTimer(), list(hosts), Printed(), Rows(), log_every, step)


def taken(data_wait_ms: float, forward_ms: float, step_ms: float, steps: int = 10) -> list[float]:
    """One rank's StepTimer.take() over `steps` steps of these times each (seconds, as it sends them)."""
    return [data_wait_ms * steps / 1000, forward_ms * steps / 1000, step_ms * steps / 1000, float(steps)]


def test_a_rank_slower_than_the_others_median_by_the_factor_is_slow_in_that_part():
    means = {"data_wait": [1.0, 1.2, 9.0, 0.8], "forward": [3.0, 3.1, 3.0, 2.9], "step": [20.0] * 4}
    assert slow_parts(means) == [(2, "data_wait", 9.0, 1.0)]  # the median of ranks 0, 1 and 3


def test_a_part_twice_the_others_or_too_small_to_matter_is_not_slow():
    at_factor = {"data_wait": [1.0, FACTOR * 1.0], "forward": [3.0, 3.0], "step": [10.0, 10.0]}
    assert slow_parts(at_factor) == []  # more than FACTOR times, not FACTOR times
    tiny = {"data_wait": [0.01, 0.05], "forward": [3.0, 3.0], "step": [10.0, 10.0]}  # 5x, but 0.04 ms of 10
    assert 0.04 < FLOOR * 10 and slow_parts(tiny) == []
    assert slow_parts({"data_wait": [5.0], "forward": [3.0], "step": [10.0]}) == []  # one rank: no others


def test_a_rank_slow_for_patience_rows_in_a_row_is_named_once_with_its_host_and_part():
    watch = stragglers()
    slow, fine = taken(41, 3, 60), taken(6, 3, 60)
    for step in range(10, 10 * (PATIENCE + 3), 10):  # slow for every row
        watch.gathered(step, [fine, slow])
    assert watch.console.lines == [
        f"warning: rank 1 on node-b is slow: data wait 41.0 ms per step, median of the other ranks 6.0 ms "
        f"(steps 1-{10 * PATIENCE}); every rank waits for it: check node-b for a slow disk or busy loader workers"
    ]


def test_a_streak_broken_before_patience_says_nothing_and_a_new_streak_warns_again():
    watch = stragglers()
    slow, fine = taken(3, 20, 40), taken(3, 5, 40)
    pattern = [slow] * (PATIENCE - 1) + [fine] + [slow] * PATIENCE + [fine] + [slow] * PATIENCE
    for index, rank_1 in enumerate(pattern):
        watch.gathered(10 * (index + 1), [fine, rank_1])
    assert len(watch.console.lines) == 2
    assert all("rank 1 on node-b is slow: forward and loss 20.0 ms" in line for line in watch.console.lines)
    assert f"(steps {10 * PATIENCE + 1}-{20 * PATIENCE})" in watch.console.lines[0]


def test_a_row_at_the_first_gather_after_each_log_every_step_with_each_ranks_ms_per_step():
    watch = stragglers(log_every=25)
    # The checks: every 10 steps, forced again at 50 (a checkpoint: no step since) and at 57 (the epoch's end).
    checks = [(10, 10), (20, 10), (30, 10), (40, 10), (50, 10), (50, 0), (57, 7)]  # (step, steps since the last)
    rowed = [watch.gathered(step, [taken(1, 2, 5, steps), taken(1, 4, 5, steps)]) for step, steps in checks]
    assert rowed == [False, False, True, False, True, False, False]
    assert [(row["type"], row["step"], row["steps"]) for row in watch.tracker.rows] == [
        ("ranks", 30, 30),
        ("ranks", 50, 20),
    ]
    assert watch.tracker.rows[0] | {"data_wait_ms": None} == {
        "type": "ranks",
        "step": 30,
        "steps": 30,
        "data_wait_ms": None,
        "forward_ms": [2.0, 4.0],
        "step_ms": [5.0, 5.0],
    }
    assert watch.tracker.rows[0]["data_wait_ms"] == pytest.approx([1.0, 1.0])


def test_a_resumed_job_rows_from_its_own_steps():
    watch = stragglers(log_every=50, step=120)  # resumed at step 120: the next row after step 150
    assert not watch.gathered(130, [taken(1, 2, 5), taken(1, 2, 5)])
    assert not watch.gathered(140, [taken(1, 2, 5), taken(1, 2, 5)])
    assert watch.gathered(150, [taken(1, 2, 5), taken(1, 2, 5)])
    assert watch.tracker.rows[0]["steps"] == 30


def test_the_summary_holds_each_ranks_totals_and_the_share_lost_to_the_slowest():
    watch = stragglers(hosts=("a", "b", "c"))
    watch.gathered(10, [taken(1, 2, 10), taken(1, 2, 10), taken(4, 2, 10)])  # rank 2: 3 ms more a step
    summary = watch.summary()
    assert summary["hosts"] == ["a", "b", "c"] and summary["steps"] == 10
    assert summary["data_wait_seconds"] == [0.01, 0.01, 0.04]
    assert summary["forward_seconds"] == [0.02] * 3 and summary["step_seconds"] == [0.1] * 3
    assert summary["slowest_rank"] == 2
    assert summary["lost_to_slowest"] == pytest.approx(0.3)  # 3 ms of every 10 ms step
    alone = stragglers(hosts=("a",))
    alone.gathered(10, [taken(1, 2, 10)])
    assert alone.summary()["slowest_rank"] == 0 and alone.summary()["lost_to_slowest"] == 0.0


class SlowBatches:
    """Three batches, each 20 ms in coming."""

    def __iter__(self):
        for batch in range(3):
            time.sleep(0.02)
            yield batch


def test_the_timer_counts_the_wait_for_batches_the_forward_and_whole_steps():
    timer = StepTimer()
    started = time.perf_counter()
    for _ in timer.batches(SlowBatches()):
        with timer.forward:
            time.sleep(0.01)
        timer.end_step()
    elapsed = time.perf_counter() - started
    data_wait, forward, step, steps = timer.take()
    assert steps == 3
    assert 0.06 <= data_wait < elapsed and 0.03 <= forward < elapsed - data_wait
    assert data_wait + forward <= step <= elapsed  # the epoch's end (the fourth wait) is no step
    assert timer.take() == [0.0, 0.0, 0.0, 0.0]  # taken: the next take counts from there


def test_the_timer_gives_a_batch_group_one_step():
    timer = StepTimer()
    batches = timer.batches([1, 2, 3, 4])
    for _ in range(2):  # two steps of two batches each (gradient accumulation)
        next(batches), next(batches)
        timer.end_step()
    assert timer.take()[3] == 2.0 and timer.step.started is None


def test_ranks_rows_are_charts_on_wandb_one_per_quantity_a_line_per_rank():
    assert wandb_names("ranks", {"steps": 10, "data_wait_ms": [1.0, 2.0]}) == {}  # no scalars: the charts
    series = RankSeries()
    assert series.charts(None) == {}  # nothing before the first row
    series.add(50, {"steps": 50, "data_wait_ms": [1.0, 9.0], "forward_ms": [2.0, 2.5], "step_ms": [8.0, 8.1]})
    series.add(100, {"steps": 50, "data_wait_ms": [1.5, 8.0], "forward_ms": [2.1, 2.4], "step_ms": [8.2, 8.2]})
    wandb = pytest.importorskip("wandb")
    charts = series.charts(wandb)
    assert sorted(charts) == ["ranks/data_wait_ms", "ranks/forward_ms", "ranks/step_ms"]
    table = charts["ranks/data_wait_ms"].table
    assert table.columns == ["step", "lineKey", "lineVal"]
    assert table.data == [[50, "rank 0", 1.0], [100, "rank 0", 1.5], [50, "rank 1", 9.0], [100, "rank 1", 8.0]]


def test_a_long_series_keeps_every_kth_row_within_what_a_wandb_table_keeps():
    wandb = pytest.importorskip("wandb")
    series, ranks = RankSeries(), 64
    for step in range(50, 50 * 400 + 1, 50):  # 400 rows of 64 ranks: 25,600 points
        series.add(step, {name: [float(step)] * ranks for name in ("data_wait_ms", "forward_ms", "step_ms")})
    table = series.charts(wandb)["ranks/step_ms"].table
    assert MAX_POINTS == wandb.Table.MAX_ROWS and len(table.data) == 134 * ranks <= MAX_POINTS  # every 3rd row
    assert [row[0] for row in table.data[:3]] == [50, 200, 350] and all(row[0] == row[2] for row in table.data)
