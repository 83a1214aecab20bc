"""MFU's parts without processes: the FLOP count is the layers' arithmetic, the machine's cache is read
back and a damaged one measured over, a peak is measured once per key, the utilization's arithmetic,
and the epoch row and summary that show it."""

import fcntl
import json
import math
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mnist_dist.data.images import DatasetInfo
from mnist_dist.tracking.console import TrainingConsole
from mnist_dist.train import flops as flops_module
from mnist_dist.train import machine_cache
from mnist_dist.train import peak as peak_module
from mnist_dist.train.flops import Utilization, job_utilization, model_flops, training_flops_per_sample
from mnist_dist.train.machine_cache import cached
from mnist_dist.train.peak import device_peak, matmul_peak
from mnist_dist.train.time_split import TimeSplit

CPU = torch.device("cpu")


def small_model() -> nn.Sequential:
    # (1, 8, 8) -> conv 3x3 -> (4, 6, 6) -> 144 features -> 10 logits
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_the_flop_count_is_the_layers_arithmetic():
    """A multiply-add is 2 FLOP; biases, BatchNorm, ReLU and the loss count nothing. Backward costs each
    layer twice its forward (the gradient of its input and of its weights), except the first layer,
    whose input needs no gradient."""
    conv = 2 * (6 * 6) * 4 * (1 * 3 * 3)  # per output position and channel: 9 multiply-adds
    linear = 2 * 144 * 10
    forward = conv + linear
    backward = linear + linear + conv  # the linear's input and weight gradients; the conv's weight gradient only
    assert training_flops_per_sample(small_model(), (1, 8, 8)) == forward + backward == 3 * forward - conv


def test_counting_leaves_the_model_and_the_random_numbers_as_they_were():
    model = small_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng = torch.get_rng_state()
    training_flops_per_sample(model, (1, 8, 8))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())  # BatchNorm's too
    assert all(parameter.grad is None for parameter in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_second_call_reads_the_cache(tmp_path):
    path, measured = tmp_path / "measured.json", []
    measure = lambda: measured.append(1) or 42.0  # noqa: E731
    assert cached("figure", measure, path) == 42.0
    assert cached("figure", measure, path) == 42.0
    assert cached("another", measure, path) == 42.0
    assert len(measured) == 2 and json.loads(path.read_text()) == {"figure": 42.0, "another": 42.0}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"figure": "fast"}', '{"figure": -1}', '{"figure": true}'])
def test_a_damaged_cache_is_measured_over_not_an_error(tmp_path, content):
    path = tmp_path / "measured.json"
    path.write_text(content)
    assert cached("figure", lambda: 7.0, path) == 7.0
    assert json.loads(path.read_text())["figure"] == 7.0


def test_a_cache_that_cannot_be_written_still_gives_the_figure(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache's folder should be
    assert cached("figure", lambda: 7.0, blocked / "mnist-dist" / "measured.json") == 7.0


def test_a_process_that_misses_waits_for_the_one_measuring_then_reads_its_figure(tmp_path):
    path = tmp_path / "measured.json"
    holder = path.with_name("measured.json.lock").open("a")
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process measuring: a lock on another open file

    def finish_measuring() -> None:
        time.sleep(0.2)
        path.write_text('{"figure": 3.0}')
        holder.close()

    threading.Thread(target=finish_measuring).start()
    assert cached("figure", lambda: pytest.fail("measured while another process measured"), path) == 3.0


def test_a_lock_held_too_long_is_measured_past(tmp_path, monkeypatch):
    """Its holder stopped (SIGSTOP, Ctrl-Z) mid-measurement: this run measures rather than wait for it."""
    monkeypatch.setattr(machine_cache, "LOCK_WAIT_SECONDS", 0.1)
    path = tmp_path / "measured.json"
    with path.with_name("measured.json.lock").open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert cached("figure", lambda: 7.0, path) == 7.0


def test_the_peak_is_measured_once_per_machine_and_read_back(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(peak_module, "matmul_peak", lambda device, dtype: calls.append(dtype) or 1.5e11)
    cache = tmp_path / "measured.json"
    assert device_peak(CPU, "no", cache) == device_peak(CPU, "bf16", cache) == 1.5e11  # float32 on a CPU, either way
    assert calls == [torch.float32]
    (key,) = json.loads(cache.read_text())
    assert f"threads {torch.get_num_threads()}" in key and "float32" in key and torch.__version__ in key


def test_a_matmul_peak_is_a_plausible_rate_and_draws_no_training_random_number():
    rng = torch.get_rng_state()
    peak = matmul_peak(CPU, seconds=0.01)  # each size once
    assert 1e8 < peak < 1e14  # FLOP/s: more than a 1990s PC, less than a GPU
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_mfu_arithmetic():
    utilization = Utilization(flops_per_sample=4e6, peak_per_process=1e11, processes=2)
    assert utilization.peak == 2e11  # every process has its own device, or share of the cores
    assert utilization.rates(10_000) == {"achieved_flops_per_second": 4e10, "mfu": 0.2}
    assert utilization.rates(20_000) == {"achieved_flops_per_second": 8e10, "mfu": 0.4}
    split = TimeSplit()
    split.add_epoch(20_000, seconds=2.0)
    split.add_epoch(20_000, seconds=1.0)
    summary = utilization.summary(split.samples_per_second)  # 40,000 samples in 3 s
    assert summary["achieved_flops_per_second"] == pytest.approx(4e6 * 40_000 / 3)
    assert summary["mfu"] == pytest.approx(4e6 * 40_000 / 3 / 2e11)
    assert (summary["train_flops_per_sample"], summary["peak_flops_per_second"]) == (4e6, 2e11)


def test_without_figures_or_training_there_is_no_rate():
    assert Utilization.unknown().rates(10_000) == {"achieved_flops_per_second": None, "mfu": None}
    assert TimeSplit().samples_per_second is None
    untrained = Utilization(4e6, 1e11, 1).summary(None)  # a finished run's final files written again
    assert (untrained["achieved_flops_per_second"], untrained["mfu"]) == (None, None)


def accelerator(main: bool = True) -> SimpleNamespace:
    """What job_utilization reads of an Accelerator, in a single process."""
    return SimpleNamespace(is_main_process=main, device=CPU, mixed_precision="no", num_processes=1)


def test_a_job_counts_from_the_cache_and_a_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    info = DatasetInfo("tiny", channels=1, height=8, width=8, num_classes=10, mean=(0.5,), std=(0.5,), class_names=())
    monkeypatch.setattr(flops_module, "device_peak", lambda device, precision: 1e11)
    said = []
    figures = job_utilization(accelerator(), small_model(), info, said.append)
    assert (figures.flops_per_sample, figures.peak) == (13824.0, 1e11) and not said
    assert model_flops(small_model(), info) == 13824.0  # read back: the key is the layers, not the object
    assert len(json.loads((tmp_path / "mnist-dist" / "measured.json").read_text())) == 1

    def fails(device, precision):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(flops_module, "device_peak", fails)
    figures = job_utilization(accelerator(), small_model(), info, said.append)
    assert figures.peak is None and figures.rates(1000.0)["mfu"] is None
    assert said == [
        "MFU not reported: counting the FLOPs or measuring the peak failed (RuntimeError: CUDA out of memory)"
    ]


ROW = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.91}
ROW |= {"epoch_seconds": 2.0, "samples_per_second": 14_500.0}


def test_the_epoch_row_shows_gflops_and_mfu(capsys):
    console = TrainingConsole(enabled=True)
    console.end_epoch({**ROW, "achieved_flops_per_second": 58.45e9, "mfu": 0.3795}, "val")
    console.end_epoch({**ROW, "achieved_flops_per_second": None, "mfu": None}, "val")
    header, known, unknown = capsys.readouterr().out.splitlines()
    assert header.split()[-2:] == ["GFLOP/s", "MFU"]
    assert known.split()[-3:] == ["14,500", "58.5", "38.0%"]
    assert unknown.split()[-2:] == ["-", "-"]


def test_an_epoch_not_evaluated_shows_dashes_for_its_validation(capsys):
    not_evaluated = {key: value for key, value in ROW.items() if not key.startswith("val_")}
    TrainingConsole(enabled=True).end_epoch({**not_evaluated, "achieved_flops_per_second": None, "mfu": None}, "val")
    header, row = capsys.readouterr().out.splitlines()
    assert row.split()[:5] == ["1", "0.5000", "90.00%", "-", "-"]


def test_the_summary_says_the_mfu_and_its_yardstick(capsys):
    results = {"test_accuracy": 0.9, "test_loss": 0.3, "kept": "last", "kept_step": 5, "seconds": 1.0}
    results |= {"epochs": 1, "steps": 5, "steps_per_epoch": 5, "train_flops_per_sample": 4.03e6}
    results |= {"peak_flops_per_second": 1.54e11, "achieved_flops_per_second": 5.85e10, "mfu": 0.38}
    TrainingConsole(enabled=True).summary(results, "runs/x")
    row = next(line for line in capsys.readouterr().out.splitlines() if "│ MFU " in line)
    assert "38.0% (58.5 GFLOP/s of a 154.0 GFLOP/s matmul peak; 4.03 MFLOP a sample)" in row
    assert math.isclose(results["achieved_flops_per_second"] / results["peak_flops_per_second"], 0.38, rel_tol=0.01)
