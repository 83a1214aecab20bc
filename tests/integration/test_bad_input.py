"""Bad input through the real entry point: one line naming the problem and the fix, exit 2, no traceback."""

import gzip
import os
import pickle
import re
import struct

import numpy as np
import pytest
from helpers import REPO, assert_clean_error


def test_bad_flag_value(train):
    result, _ = train("--lr", "-0.1", check=False)
    assert_clean_error(result, "lr must be greater than 0")


def test_a_run_name_that_is_a_path_is_refused_before_anything_is_written(train):
    result, run_dir = train("--run-name", "../../escaped", check=False)
    assert_clean_error(result, "run_name '../../escaped' is not a plain name")
    assert not run_dir.exists()


def test_a_config_file_that_sets_an_option_twice(train, tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("lr: 0.1\nepochs: 2\nlr: 0.3\n")
    result, _ = train("--config", path, check=False)
    assert_clean_error(result, "sets 'lr' twice (lines 1 and 3)")


def test_unknown_key_in_config_file(train, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: lenet\nepoch: 3\n")
    result, _ = train("--config", path, check=False)
    assert_clean_error(result, "unknown option 'epoch'", "Did you mean 'epochs'?")


def test_missing_dataset_files_without_download(train, tmp_path):
    result, _ = train("--dataset", "mnist", "--data-dir", tmp_path / "empty", "--no-download", check=False)
    assert_clean_error(result, "mnist", str(tmp_path / "empty"))


def test_corrupt_idx_file(train, tmp_path):
    raw = tmp_path / "d" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, count in (("train", 6), ("t10k", 4)):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, count, 28, 28) + bytes(28 * 28 * (count - 1))
        )
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + bytes(count))
    result, _ = train("--dataset", "mnist", "--data-dir", tmp_path / "d", "--no-download", check=False)
    assert_clean_error(result, "train-images-idx3-ubyte")


def test_mnist_pkl_that_is_not_a_dataset(train, tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as file:
        pickle.dump({"weights": np.zeros(3)}, file, protocol=2)
    result, _ = train("--dataset", "mnist-pkl", "--data-file", path, check=False)
    assert_clean_error(result, str(path))


def test_run_dir_that_cannot_be_written(train, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result, _ = train("--dataset", "digits", "--max-steps", "1", "--run-dir", blocker / "run", check=False)
    assert_clean_error(result, "cannot write the run directory", "--run-dir")


# On the path of the test below only: holds one rank back at its start, as cold imports on a loaded
# node did (issue 26), until the launcher ends it.
SLOW_START = """import os, time
if os.environ.get("RANK") == os.environ["MNIST_DIST_TEST_SLOW_RANK"]:
    time.sleep(120)
"""


@pytest.mark.parametrize("launcher, slowed_rank", [("torchrun", 0), ("torchrun", 1), ("accelerate", 0)])
def test_errors_in_a_distributed_job_are_said_once(train, tmp_path, launcher, slowed_rank):
    # Whichever rank fails first says it: the launcher ends the other as soon as the first exits, so a
    # rank 0 that came second was ended before it could say it, and no `error:` line was left.
    hook = tmp_path / "slow-start"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_START)
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "MNIST_DIST_TEST_SLOW_RANK": str(slowed_rank)}
    result, _ = train("--optimizer", "sgdd", processes=2, launcher=launcher, check=False, env=env)
    assert_clean_error(result, "unknown optimizer 'sgdd'", processes=2)
    exits = dict(re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*exitcode\s*: (-?\d+)", result.stderr))
    assert exits == {str(slowed_rank): "-15", str(1 - slowed_rank): "2"}, result.stderr[-3000:]
