"""End-to-end training runs with real processes: accuracy bars, files written, DDP equivalence."""

import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, deterministic_args, metrics_rows, skip_unless_required, summary
from safetensors.torch import load_file

from mnist_dist import load_model
from mnist_dist.cli import load_yaml
from mnist_dist.data.datasets import load_dataset
from mnist_dist.evaluate.export import export_program
from mnist_dist.evaluate.trained_model import load_trained

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_lenet_reaches_95_percent_on_digits_in_one_epoch_with_two_processes(train):
    # 2 processes x 50 = configs/lenet.yaml's global batch of 100 (180 steps); seeds 0-4 gave 96-99% here.
    result, run_dir = train(
        "--config", "configs/lenet.yaml", "--dataset", "digits", "--epochs", "1", "--batch-size", "50", processes=2
    )
    results = summary(run_dir)
    assert results["world_size"] == 2
    assert results["test_accuracy"] >= 0.95, results
    # Everything the run promises is on disk and agrees with itself.
    assert load_yaml(str(run_dir / "config.yaml"))["model"] == "lenet"
    lines = metrics_rows(run_dir)
    epochs = [line for line in lines if line["type"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["val_accuracy"] == results["val_accuracy"]
    assert epochs[0]["val_samples"] == 2000  # 10% of the 20,000 training digits held out
    assert results["kept"] == "best" and results["kept_step"] == 180
    assert [line["step"] for line in lines if line["type"] == "step"] == [50, 100, 150]  # 18,000 / (2 x 50) steps
    assert set(load_file(run_dir / "model.safetensors")) >= {"0.weight", "9.bias"}
    assert "(best weights, step 180)" in result.stdout  # the summary table
    # Where the time went (the epoch's own figures), and the training's arithmetic rate against the peak.
    split = results["time_split"]
    assert split["training"] == epochs[0]["epoch_seconds"] and split["validation"] == epochs[0]["val_seconds"]
    assert split["start_up"] > 1 and split["epoch_ends"] >= 0 and split["end"] > 0  # torch's import alone: > 1 s
    assert results["train_flops_per_sample"] == 1_221_840  # lenet: its layers' matmuls and convolutions
    assert 0 < results["mfu"] < 1 and results["peak_flops_per_second"] > results["achieved_flops_per_second"]
    # A log (not a terminal) keeps whole values, uncut at 80 columns, and ends with the files and next commands.
    assert results["git_commit"] in result.stdout
    assert "model.safetensors, last.safetensors, summary.json, metrics.jsonl" in result.stdout
    assert f"python evaluate.py --checkpoint {run_dir}" in result.stdout


# SGD with no schedule, label smoothing or weight decay: each run takes the same steps on the same samples.
# Nothing held out: the small CIFAR-10 set's 400 images then split into whole batches of 100 (a partial
# last batch is averaged differently when accumulated).
SAME_STEPS = "--model lenet --optimizer sgd --lr 0.05 --schedule none --label-smoothing 0 --weight-decay 0".split()
SAME_STEPS += ["--val-size", "0"]


def assert_the_same_steps(train, *options: str, atol: float = 1e-5) -> None:
    """1 process x batch 100 == 1 process x 2 x batch 50 accumulated == 2 processes x batch 50,
    and the resident and DataLoader paths give identical weights.

    DistributedSampler deals one permutation round-robin, so 2 ranks x 50 images cover exactly the
    100 images of the 1-process batch; DDP averages their gradients. The weights must agree.
    """
    common = [*SAME_STEPS, "--deterministic", *options]
    _, single = train(*common, "--batch-size", "100")  # the resident path (auto on CPU)
    _, classic = train(*common, "--batch-size", "100", "--loader", "dataloader")
    _, accumulated = train(*common, "--batch-size", "50", "--grad-accum-steps", "2")
    _, distributed = train(*common, "--batch-size", "50", processes=2)
    reference = load_file(single / "model.safetensors")
    # Both data paths feed the same batches: the same bits.
    assert all(
        torch.equal(tensor, reference[name]) for name, tensor in load_file(classic / "model.safetensors").items()
    )
    for other in (accumulated, distributed):
        weights = load_file(other / "model.safetensors")
        for name, tensor in reference.items():
            torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=atol)
    assert summary(distributed)["steps"] == summary(single)["steps"]


def test_one_process_two_processes_and_accumulation_take_the_same_steps(train):
    assert_the_same_steps(train, "--dataset", "digits", "--max-steps", "15")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    """A small CIFAR-10 in its official python-batch format: 5 x 80 training images, 40 test images."""
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for name, count in [*((f"data_batch_{i}", 80) for i in range(1, 6)), ("test_batch", 40)]:
        pixels = generator.integers(0, 256, (count, 3072), dtype=np.uint8)  # rows of 3 x 32 x 32
        batch = {b"data": pixels, b"labels": generator.integers(0, 10, count).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder.parent


def test_augmentation_is_the_same_whatever_the_processes_batches_or_loader(train, cifar_dir):
    """Each sample's shift and flip is drawn from (seed, epoch, index), not per rank. On CIFAR-10, whose
    augmentation (shift and flip) holds the 28x28 sets' (a shift): one dataset is enough.

    The tolerance is 1e-4: the layouts feed bit-identical images (tests/unit/test_augment.py), but
    in one of them a rounding difference of 1e-8 can tip a max-pool or ReLU the other way. Measured
    on digits, 6 steps, seed 0: 3e-5 with accumulation, 2e-8 on 2 processes; per-rank random draws
    (the earlier augmentation) gave 4e-3 and 5e-3.
    """
    assert_the_same_steps(
        train, "--augment", "--dataset", "cifar10", "--max-steps", "6", "--data-dir", cifar_dir, atol=1e-4
    )


def test_fashion_mnist_lenet_one_epoch_reaches_80_percent_and_the_model_evaluates_mirror_images(
    train, data_dir, tmp_path
):
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        reason = f"needs Debian's dataset-fashion-mnist ({FASHION}): apt-get install dataset-fashion-mnist"
        skip_unless_required(reason, "MNIST_DIST_REQUIRE_FASHION")
    # 2 processes x 50: the recipe's global batch of 100, 540 steps over the 54,000 training images,
    # with Fashion-MNIST's augmentation (mirror images) and each image evaluated with its mirror image.
    args = ["--config", "configs/lenet.yaml", "--dataset", "fashion-mnist", "--epochs", "1", "--batch-size", "50"]
    _, run_dir = train(*args, "--augment", "--eval-flip", processes=2)
    results = summary(run_dir)
    assert results["test_accuracy"] >= 0.80, results
    # The saved model evaluates the mirror images too: load_model gives the trainer's test accuracy.
    model, preprocess = load_model(run_dir)
    test = load_dataset("fashion-mnist", str(data_dir), "", download=False).test
    with torch.no_grad():
        logits = torch.cat([model(preprocess(batch)) for batch in test.images.split(1000)])
        single = torch.cat([torch.nn.Sequential.forward(model, preprocess(batch)) for batch in test.images.split(1000)])
    correct = int((logits.argmax(1) == test.labels).sum())
    assert abs(correct - round(results["test_accuracy"] * 10_000)) <= 2  # 2 threads here, 1 per process there
    assert not torch.allclose(logits, single)  # not the single view's logits
    # And so does the exported program, at any batch size (its example batch has 2 images).
    export_program(load_trained(run_dir), tmp_path / "model.pt2")
    program = torch.export.load(tmp_path / "model.pt2").module()
    torch.testing.assert_close(program(test.images[:1000]), logits[:1000], rtol=1e-4, atol=1e-4)


def test_dry_run_writes_nothing(train, tmp_path):
    result, run_dir = train("--dry-run", "--model", "mlp", "--dataset", "digits")
    assert not run_dir.exists()
    assert "dry run: nothing written" in result.stdout


def test_early_stopping_and_max_steps(train):
    # patience 1 with a learning rate far too small to improve: stops after epoch 2 of 5.
    _, run_dir = train(
        "--model",
        "linear",
        "--dataset",
        "digits",
        "--epochs",
        "5",
        "--optimizer",
        "sgd",
        "--lr",
        "1e-9",
        "--momentum",
        "0",
        "--schedule",
        "none",
        "--early-stopping-patience",
        "1",
        "--batch-size",
        "500",
    )
    assert summary(run_dir)["epochs"] == 2
    _, run_dir = train("--model", "linear", "--dataset", "digits", "--max-steps", "7", "--batch-size", "500")
    assert summary(run_dir)["steps"] == 7


def test_demo_script_trains_with_two_processes(data_dir, tmp_path):
    """The README's main command (scripts/demo.sh), shortened to one epoch."""
    run_dir = tmp_path / "demo"
    command = [
        "bash",
        "scripts/demo.sh",
        "--epochs",
        "1",
        "--data-dir",
        data_dir,
        "--run-dir",
        run_dir,
        "--wandb",
        "disabled",
    ]
    result = subprocess.run([str(part) for part in command], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(run_dir)["world_size"] == 2
    assert "summary" in result.stdout


def test_compiled_channels_last_model_trains_and_saves_bare_weights(train):
    """--compile and --channels-last wrap the model; what is saved is the bare model's state dict."""
    _, run_dir = train("--model", "cnn", "--dataset", "digits", "--max-steps", "3", "--compile", "--channels-last")
    saved = load_file(run_dir / "model.safetensors")
    assert set(saved) == set(load_file(run_dir / "checkpoints" / "step-000003" / "model.safetensors"))
    assert not any(name.startswith(("_orig_mod", "module.")) for name in saved)


def test_a_rank_without_evaluation_batches_does_not_hang_a_batchnorm_model(train):
    """One evaluation batch for two processes: rank 1 evaluates nothing, and must not wait in a
    collective that DDP's forward would start (the cnn has BatchNorm buffers)."""
    _, run_dir = train(
        "--model", "cnn", "--dataset", "digits", "--eval-batch-size", "5000", "--max-steps", "3", processes=2
    )
    assert summary(run_dir)["world_size"] == 2


def test_progress_lines_in_a_log_come_at_every_tenth_of_the_epoch_with_accumulation_too(train):
    # 18,000 training digits / (100 x 2 accumulated) = 90 optimizer steps: a line every 9.
    result, _ = train("--model", "lenet", "--epochs", "1", "--batch-size", "100", "--grad-accum-steps", "2")
    lines = re.findall(
        r"^epoch 1/1 +(\d+)% \(step (\d+)/90\) loss [\d.]+ lr [\d.e-]+ [\d,]+ samples/s, \d+ s left",
        result.stdout,
        re.M,
    )
    assert [(int(percent), int(step)) for percent, step in lines] == [(10 * n, 9 * n) for n in range(1, 10)]


def test_nan_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(train):
    # Nesterov, weight decay and label smoothing (the cnn recipe's) make lr 40 blow up within 30 steps;
    # with lenet's plain recipe its ReLUs die instead and the loss stays finite.
    diverging = ["--lr", "40", "--schedule", "none", "--nesterov", "--weight-decay", "5e-4", "--label-smoothing", "0.1"]
    result, run_dir = train(*deterministic_args(30), *diverging, "--checkpoint-every", "2", check=False)
    assert result.returncode == 4, result.stderr[-2000:]
    assert "error: the" in result.stderr and "NaN or infinite" in result.stderr
    # Checkpoints were kept (every 2 steps, the last ones before the loss blew up), the error names the
    # newest, and every one of them holds finite weights.
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    assert checkpoints, "no checkpoint was kept"
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == checkpoints[-1] and f"the last good checkpoint is {latest}" in result.stderr
    for checkpoint in checkpoints:
        weights = load_file(checkpoint / "model.safetensors")
        assert weights and all(torch.isfinite(t).all() for t in weights.values()), checkpoint.name
