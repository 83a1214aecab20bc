"""A full disk at each place a run writes: one `error:` line naming the file, exit 2, nothing lost, and
the same command finishes the run once there is space again.

The disk is real: a small tmpfs that the test mounts (root only) and resizes between runs, so that the
free space at each step is exact; tmpfs counts whole 4 KiB pages of file data. Without root the tests
skip; with MNIST_DIST_REQUIRE_TMPFS=1 (CI) they fail instead.
"""

import os
import subprocess

import pytest
from helpers import assert_clean_error, assert_same_weights, metrics_rows, run_script, skip_unless_required, train_into

PAGE = 4096
PLENTY = 64 * 2**20

# lenet on digits, one epoch cut at --max-steps, a checkpoint at its end: 73 pages (the weights take 33),
# 106 once it holds the best weights too (best.safetensors: after the epoch's validation).
ARGS = ["--model", "lenet", "--dataset", "digits", "--batch-size", "32", "--lr", "0.05", "--deterministic"]
ARGS += ["--epochs", "1", "--log-every", "1"]


class SmallDisk:
    """A tmpfs mounted at `path`; `leave_free(pages)` resizes it to what it holds now plus `pages`."""

    def __init__(self, path):
        self.path = path
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={PLENTY}", "tmpfs", path], check=True)

    def used(self) -> int:
        stats = os.statvfs(self.path)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def leave_free(self, pages: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={self.used() + pages * PAGE}", self.path], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "--lazy", self.path], check=False)


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        skip_unless_required("mounting a small tmpfs needs root", "MNIST_DIST_REQUIRE_TMPFS")
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    disk.unmount()


def files_in(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_no_temporaries(folder) -> None:
    left = [path.name for path in folder.rglob("*") if path.name.endswith(".tmp") or path.name.startswith(".partial")]
    assert not left, left


def test_a_full_disk_at_the_lock_leaves_no_lock_no_temporary_and_no_folder(disk, data_dir):
    """The lock is the run's first write: its facts go to a temporary file first, which fails here."""
    run_dir = disk.path / "runs" / "run"  # two folders this job makes
    (disk.path / "filler").write_bytes(b"x")  # one page used: a tmpfs of size 0 would have no limit at all
    disk.leave_free(0)
    failed = train_into(run_dir, data_dir, *ARGS, "--max-steps", "10", check=False)
    assert_clean_error(failed, f"cannot write the run directory {run_dir} (No space left on device)")
    assert [path.name for path in disk.path.iterdir()] == ["filler"]


def test_config_yaml_on_a_full_disk_leaves_no_run_folder(disk, data_dir, processes=2):
    """Only the main process writes config.yaml: every rank ends with its line, none waits for it. (2
    processes: the main process's failure reaches the other rank; one process takes the same path.)"""
    run_dir = disk.path / "run"
    disk.leave_free(1)  # the run directory's lock takes it
    failed = train_into(run_dir, data_dir, *ARGS, "--max-steps", "10", processes=processes, check=False)
    where = f"cannot write {run_dir}/config.yaml (No space left on device)"
    assert_clean_error(failed, where, "run the same command", processes=processes)
    assert not run_dir.exists()
    disk.leave_free(PLENTY // PAGE)
    train_into(run_dir, data_dir, *ARGS, "--max-steps", "10", processes=processes)


def test_metrics_jsonl_on_a_full_disk_stops_every_rank(disk, data_dir, processes=2):
    """Only the main process writes metrics.jsonl: the ranks learn it at their next agreement (step 10)."""
    run_dir, args = disk.path / "run", [*ARGS, "--max-steps", "10"]
    disk.leave_free(2)  # the lock and config.yaml; the first row needs a page more
    failed = train_into(run_dir, data_dir, *args, processes=processes, check=False)
    assert_clean_error(failed, f"cannot write {run_dir}/metrics.jsonl (No space left on device)", processes=processes)
    assert not (run_dir / "checkpoints").exists()  # never a checkpoint that holds a step whose row was lost
    assert_no_temporaries(run_dir)
    disk.leave_free(PLENTY // PAGE)
    train_into(run_dir, data_dir, *args, processes=processes)
    assert [row["step"] for row in metrics_rows(run_dir) if row["type"] == "step"] == list(range(1, 11))


def test_a_full_disk_at_the_checkpoint_the_final_model_and_summary_json(disk, data_dir, tmp_path):
    """Each failure keeps what was there; each rerun goes one file further, and the end equals a run
    that never failed, bit for bit."""
    run_dir, args = disk.path / "run", [*ARGS, "--max-steps", "20", "--checkpoint-every", "10"]
    disk.leave_free(120)  # step-000010 fits (73 pages, 77 with the lock, config and metrics), step-000020 not
    failed = train_into(run_dir, data_dir, *args, check=False)
    assert_clean_error(failed, f"writing checkpoint {run_dir}/checkpoints/step-000020 failed", "previous checkpoints")
    assert [path.name for path in (run_dir / "checkpoints").glob("step-*")] == ["step-000010"]
    assert_no_temporaries(run_dir)

    disk.leave_free(125)  # the checkpoint at step 20 fits (106 pages, 109 with the lock and rows), the weights not
    failed = train_into(run_dir, data_dir, *args, check=False)
    assert_clean_error(failed, f"cannot write {run_dir}/model.safetensors (No space left on device)")
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "summary.json").exists()
    assert_no_temporaries(run_dir)

    weights_pages = -(-(run_dir / "checkpoints" / "step-000020" / "model.safetensors").stat().st_size // PAGE)
    disk.leave_free(1 + 2 * weights_pages)  # the lock, the kept and the last weights: summary.json's page is missing
    failed = train_into(run_dir, data_dir, *args, check=False)
    assert_clean_error(failed, f"cannot write {run_dir}/summary.json (No space left on device)")
    assert (run_dir / "last.safetensors").exists() and not (run_dir / "summary.json").exists()
    assert_no_temporaries(run_dir)

    disk.leave_free(PLENTY // PAGE)
    train_into(run_dir, data_dir, *args)
    assert [row["step"] for row in metrics_rows(run_dir) if row["type"] == "step"] == list(range(1, 21))
    train_into(tmp_path / "uninterrupted", data_dir, *args)
    assert_same_weights(run_dir, tmp_path / "uninterrupted")


def test_an_evaluation_report_on_a_full_disk_leaves_the_earlier_one(disk, lenet_five_steps):
    run_dir, out = lenet_five_steps, disk.path / "report"  # evaluate.py only reads the run
    first = run_script("evaluate.py", ["--checkpoint", run_dir, "--out", out])
    assert first.returncode == 0, first.stderr[-3000:]
    report = files_in(out)
    disk.leave_free(2)  # metrics.json fits, the figures do not
    failed = run_script("evaluate.py", ["--checkpoint", run_dir, "--out", out])
    assert_clean_error(failed, f"cannot write {out} (No space left on device)", "writable --out")
    assert files_in(out) == report
    assert [path.name for path in disk.path.iterdir()] == ["report"]  # no staging folder left
