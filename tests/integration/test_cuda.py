"""The CUDA paths, for the first machine with a GPU (bench/gpu.sh runs them there): mixed precision on
both loader paths, evaluation equal to the CPU's, deterministic resume bit for bit, torch.compile.

On a machine without a GPU every test here skips, saying so (pytest -ra lists the reason).
"""

import json
import os

import pytest
import torch
from helpers import assert_same_weights, deterministic_args, run_script, summary, train_into

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs these on one)"),
]


@pytest.mark.parametrize("loader", ["resident", "dataloader"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_epoch_on_the_gpu_in_mixed_precision_on_both_loader_paths(train, precision, loader):
    _, run_dir = train("--model", "cnn", "--epochs", "1", "--mixed-precision", precision, "--loader", loader)
    results = summary(run_dir)
    assert results["device"].startswith("cuda") and results["mixed_precision"] == precision
    assert results["test_accuracy"] >= 0.98, results


def test_evaluation_on_the_gpu_equals_the_cpus(train, tmp_path):
    _, run_dir = train("--model", "lenet", "--epochs", "1", "--mixed-precision", "no")
    numbers = {}
    for device, env in (("gpu", None), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        out = tmp_path / device
        result = run_script("evaluate.py", ["--checkpoint", run_dir, "--out", out], env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        numbers[device] = json.loads((out / "metrics.json").read_text())
    gpu, cpu = numbers["gpu"], numbers["cpu"]
    assert gpu["samples"] == cpu["samples"] == 5000
    assert gpu["accuracy"] == pytest.approx(cpu["accuracy"], abs=4e-4)  # 2 images of 5,000: kernels round apart
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-3)


def test_deterministic_resume_on_the_gpu_is_bit_identical(data_dir, tmp_path):
    train_into(tmp_path / "uninterrupted", data_dir, *deterministic_args(40))
    train_into(tmp_path / "resumed", data_dir, *deterministic_args(20, "--checkpoint-every", "10"))
    train_into(tmp_path / "resumed", data_dir, *deterministic_args(40, "--checkpoint-every", "10"))
    assert summary(tmp_path / "resumed")["device"].startswith("cuda")
    assert_same_weights(tmp_path / "resumed", tmp_path / "uninterrupted")


def test_compile_trains_on_the_gpu(train):
    _, run_dir = train("--model", "cnn", "--max-steps", "30", "--compile")
    assert summary(run_dir)["steps"] == 30 and os.path.exists(run_dir / "model.safetensors")
