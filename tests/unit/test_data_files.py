"""Dataset files in their official formats, written small into tmp_path, read back exactly."""

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import skip_unless_required

from mnist_dist.data import formats as files
from mnist_dist.data.formats import prepare_torchvision_files, read_torchvision_split
from mnist_dist.data.pickles import read_mnist_pkl
from mnist_dist.errors import DatasetError

NUM_TRAIN, NUM_TEST = 20, 10
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def no_system_dirs(monkeypatch, tmp_path):
    """Keep this machine's installed datasets out of every test that does not ask for them."""
    monkeypatch.setattr(files, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "no-system-dir"]})


# --- writers for the official formats ---------------------------------------------------------


def fake_split(num, channels=1, size=28, seed=0):
    """Known pixels (every value 0..255 appears) and labels cycling through 0..9."""
    images = ((np.arange(num * channels * size * size) + seed) % 256).astype(np.uint8)
    return images.reshape(num, channels, size, size), (np.arange(num) + seed) % 10


def idx_bytes(array: np.ndarray, magic: int, count: int | None = None) -> bytes:
    """An IDX file: magic, big-endian uint32 dimensions, then the raw bytes."""
    dims = (len(array) if count is None else count, *array.shape[1:])
    return struct.pack(f">I{len(dims)}I", magic, *dims) + array.astype(np.uint8).tobytes()


def write_idx_files(folder: Path, gz: bool = False, **overrides) -> dict:
    """The 4 MNIST files in `folder`; `overrides` replaces a file's bytes by name. Returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": fake_split(NUM_TRAIN), "t10k": fake_split(NUM_TEST, seed=7)}
    for split, (images, labels) in splits.items():
        contents = {
            f"{split}-images-idx3-ubyte": idx_bytes(images[:, 0], files.IMAGES_MAGIC),
            f"{split}-labels-idx1-ubyte": idx_bytes(labels, files.LABELS_MAGIC),
        }
        for name, data in contents.items():
            data = overrides.get(name, data)
            # mtime=0 and level 1: gz bytes unlike any official file, as with a re-compressed copy
            path, data = (folder / f"{name}.gz", gzip.compress(data, 1, mtime=0)) if gz else (folder / name, data)
            path.write_bytes(data)
    return splits


def assert_split(split, images: np.ndarray, labels: np.ndarray):
    got_images, got_labels = split
    assert got_images.dtype == torch.uint8 and got_images.shape == images.shape
    assert got_labels.dtype == torch.int64 and got_labels.shape == (len(labels),)
    assert torch.equal(got_images, torch.from_numpy(images))
    assert torch.equal(got_labels, torch.from_numpy(labels).to(torch.int64))


def assert_reads_back(name: str, root: Path, splits: dict):
    assert_split(read_torchvision_split(name, root, train=True), *splits["train"])
    assert_split(read_torchvision_split(name, root, train=False), *splits["t10k"])


def cifar_batches() -> dict:
    """CIFAR-10's python batches as the real files hold them: uint8 rows (n, 3072) and a label list."""
    batches = {}
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images, labels = fake_split(4, channels=3, size=32, seed=index)
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": images.reshape(4, 3072),
            b"filenames": [b"x.png"] * 4,
        }
    batches["batches.meta"] = {b"label_names": [b"airplane", b"automobile"], b"num_vis": 3072}
    return batches


def write_cifar_folder(folder: Path, batches: dict):
    folder.mkdir(parents=True)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def expected_cifar(batches: dict, train: bool):
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images = np.concatenate([batches[name][b"data"] for name in names]).reshape(-1, 3, 32, 32)
    return images, np.concatenate([batches[name][b"labels"] for name in names])


def write_pkl_gz(path: Path, splits, protocol=2):
    path.write_bytes(gzip.compress(pickle.dumps(splits, protocol=protocol)))


# --- MNIST-style IDX files ---------------------------------------------------------------------


def test_reads_raw_idx_files_in_torchvision_layout(tmp_path):
    splits = write_idx_files(tmp_path / "MNIST" / "raw")
    assert prepare_torchvision_files("mnist", tmp_path, download=False) == tmp_path
    assert_reads_back("mnist", tmp_path, splits)


def test_decompresses_gz_files_in_torchvision_layout(tmp_path):
    splits = write_idx_files(tmp_path / "MNIST" / "raw", gz=True)
    prepare_torchvision_files("mnist", tmp_path, download=False)
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert_reads_back("mnist", tmp_path, splits)


def test_decompresses_a_flat_folder_of_gz_files(tmp_path):
    splits = write_idx_files(tmp_path, gz=True)
    prepare_torchvision_files("mnist", tmp_path, download=False)
    assert sorted(os.listdir(tmp_path / "MNIST" / "raw")) == sorted(files.IDX_FILES)  # no temp files left
    assert_reads_back("mnist", tmp_path, splits)


def test_finds_fashion_mnist_in_a_system_dir_whatever_its_gz_checksums(tmp_path, monkeypatch):
    system_dir = tmp_path / "usr-share-datasets"
    splits = write_idx_files(system_dir, gz=True)
    official_md5s = {md5 for _name, md5 in torchvision.datasets.FashionMNIST.resources}
    assert not {hashlib.md5(path.read_bytes()).hexdigest() for path in system_dir.iterdir()} & official_md5s
    monkeypatch.setattr(files, "SYSTEM_DIRS", {"fashion-mnist": [system_dir]})
    data_dir = tmp_path / "data"
    prepare_torchvision_files("fashion-mnist", data_dir, download=False)
    assert_reads_back("fashion-mnist", data_dir, splits)


def test_second_prepare_touches_nothing_once_files_are_in_place(tmp_path, monkeypatch):
    write_idx_files(tmp_path, gz=True)
    prepare_torchvision_files("mnist", tmp_path, download=False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("prepare rewrote files that were already in place")

    monkeypatch.setattr(files, "_install", must_not_run)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", must_not_run)
    prepare_torchvision_files("mnist", tmp_path, download=True)


# --- CIFAR-10 python batches ----------------------------------------------------------------------


def test_reads_cifar_batches_whose_md5_differs_from_torchvision_list(tmp_path):
    batches = cifar_batches()
    write_cifar_folder(tmp_path / "cifar-10-batches-py", batches)
    with pytest.raises(RuntimeError, match="corrupted"):  # why formats.py reads the batches itself
        torchvision.datasets.CIFAR10(tmp_path, train=False)
    prepare_torchvision_files("cifar10", tmp_path, download=False)
    for train in (True, False):
        images, labels = read_torchvision_split("cifar10", tmp_path, train=train)
        assert images.is_contiguous()
        assert_split((images, labels), *expected_cifar(batches, train))


def test_extracts_the_cifar_archive(tmp_path):
    batches = cifar_batches()
    write_cifar_folder(tmp_path / "staging" / "cifar-10-batches-py", batches)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "staging" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    prepare_torchvision_files("cifar10", tmp_path, download=False)
    assert_split(read_torchvision_split("cifar10", tmp_path, train=True), *expected_cifar(batches, True))


def test_refuses_a_cifar_archive_member_outside_the_folder(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"bad"))
    with pytest.raises(DatasetError, match="refusing to extract .*escaped.txt"):
        prepare_torchvision_files("cifar10", tmp_path, download=False)
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_corrupt_cifar_batch_names_the_file(tmp_path):
    write_cifar_folder(tmp_path / "cifar-10-batches-py", cifar_batches())
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"cannot read CIFAR-10 batch .*test_batch .*re-download or replace"):
        read_torchvision_split("cifar10", tmp_path, train=False)


# --- mnist.pkl.gz -----------------------------------------------------------------------------------


def test_reads_mnist_pkl_with_valid_split_joined_to_train(tmp_path):
    (train, train_labels), (valid, valid_labels), (test, test_labels) = (
        fake_split(num, seed=seed) for num, seed in ((6, 0), (4, 3), (5, 9))
    )
    as_floats = lambda images: (images.reshape(len(images), 784) / 255).astype(np.float32)  # noqa: E731
    write_pkl_gz(
        tmp_path / "mnist.pkl.gz",
        ((as_floats(train), train_labels), (as_floats(valid), valid_labels), (as_floats(test), test_labels)),
    )
    train_images, got_train_labels, test_images, got_test_labels = read_mnist_pkl(tmp_path / "mnist.pkl.gz")
    assert_split(
        (train_images, got_train_labels), np.concatenate([train, valid]), np.concatenate([train_labels, valid_labels])
    )
    assert_split((test_images, got_test_labels), test, test_labels)


class RunsShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_refuses_a_pickle_that_imports_code(tmp_path):
    marker = tmp_path / "pwned"
    write_pkl_gz(tmp_path / "mnist.pkl.gz", (RunsShellCommand(marker), None, None))
    with pytest.raises(DatasetError, match=r"refusing to load .*mnist.pkl.gz: the file asks to import \w+\.system"):
        read_mnist_pkl(tmp_path / "mnist.pkl.gz")
    assert not marker.exists()


@pytest.mark.parametrize(
    "contents, message",
    [
        (None, r"not found; pass --data-file path/to/mnist.pkl.gz"),
        (b"plain bytes", r"not a readable gzip file"),
        (gzip.compress(b"not a pickle"), r"not a valid pickle"),
        (gzip.compress(pickle.dumps({"train": 1}, protocol=2)), r"should hold a tuple \(train, valid, test\)"),
        (
            gzip.compress(pickle.dumps(((np.zeros((3, 784)), np.zeros(2)),) * 3, protocol=2)),
            r"the train split should be .* got images \(3, 784\) and labels \(2,\)",
        ),
    ],
    ids=["missing", "not-gzip", "not-pickle", "not-a-tuple", "lengths-differ"],
)
def test_bad_mnist_pkl_is_a_dataset_error(tmp_path, contents, message):
    path = tmp_path / "mnist.pkl.gz"
    if contents is not None:
        path.write_bytes(contents)
    with pytest.raises(DatasetError, match=message):
        read_mnist_pkl(path)


# --- errors a user can fix -----------------------------------------------------------------------------


def test_missing_files_without_download_lists_every_path_tried(tmp_path):
    with pytest.raises(DatasetError) as error:
        prepare_torchvision_files("fashion-mnist", tmp_path, download=False)
    message = str(error.value)
    assert "fashion-mnist" in message and "downloading is off" in message
    for folder in (tmp_path / "FashionMNIST" / "raw", tmp_path, tmp_path / "no-system-dir"):
        assert str(folder) in message
    assert "train-images-idx3-ubyte(.gz)" in message and "apt-get install dataset-fashion-mnist" in message


def test_failed_download_is_one_dataset_error(tmp_path, monkeypatch):
    def offline(self):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(DatasetError, match=r"mnist: .*download failed \(OSError: Network is unreachable\)"):
        prepare_torchvision_files("mnist", tmp_path, download=True)


def assert_reading_fails(folder: Path, overrides: dict, match: str, train: bool = True) -> None:
    """Fake MNIST files with `overrides` in place of some: preparing them passes, reading the split fails."""
    write_idx_files(folder, **overrides)
    prepare_torchvision_files("mnist", folder, download=False)
    with pytest.raises(DatasetError, match=match):
        read_torchvision_split("mnist", folder, train=train)


def test_wrong_idx_magic_names_the_file(tmp_path):
    images, _labels = fake_split(NUM_TRAIN)
    assert_reading_fails(
        tmp_path,
        {"train-images-idx3-ubyte": idx_bytes(images[:, 0], 0x00000801)},
        r"train-images-idx3-ubyte is not an IDX images file: magic number 0x00000801, expected 0x00000803; re-download",
    )


def test_fewer_images_than_the_header_declares(tmp_path):
    images, _labels = fake_split(NUM_TRAIN)
    assert_reading_fails(
        tmp_path,
        {"train-images-idx3-ubyte": idx_bytes(images[:, 0], 0x803, count=NUM_TRAIN + 5)},
        r"train-images-idx3-ubyte holds 20 images but its header declares 25",
    )


def test_label_count_must_match_image_count(tmp_path):
    assert_reading_fails(
        tmp_path,
        {"t10k-labels-idx1-ubyte": idx_bytes(np.zeros(NUM_TEST - 1), 0x801)},
        r"t10k-images-idx3-ubyte holds 10 images but .*t10k-labels-idx1-ubyte holds 9 labels",
        train=False,
    )


def test_corrupt_gzip_names_the_file(tmp_path):
    write_idx_files(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"x" * 100)[:20])  # cut short
    with pytest.raises(DatasetError, match=r"cannot unpack .*train-labels-idx1-ubyte.gz .*re-download or replace"):
        prepare_torchvision_files("mnist", tmp_path, download=False)
    assert not (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()


def test_unwritable_data_dir_asks_for_another(tmp_path, monkeypatch):
    write_idx_files(tmp_path / "system", gz=True)
    monkeypatch.setattr(files, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "system"]})
    (tmp_path / "a-file").write_text("")
    # mkdir under a regular file fails even as root, where chmod would not stop a write.
    with pytest.raises(DatasetError, match=r"cannot write dataset files under .*a-file.*pass a writable --data-dir"):
        prepare_torchvision_files("fashion-mnist", tmp_path / "a-file" / "data", download=False)


# --- the real files, where Debian installed them ---------------------------------------------------------


def test_reads_debian_fashion_mnist_test_split(tmp_path, monkeypatch):
    if not (DEBIAN_FASHION / "train-labels-idx1-ubyte.gz").exists():
        reason = "needs Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist)"
        skip_unless_required(reason, "MNIST_DIST_REQUIRE_FASHION")  # CI installs it: there it must run
    monkeypatch.setattr(files, "SYSTEM_DIRS", {"fashion-mnist": [DEBIAN_FASHION]})
    root = prepare_torchvision_files("fashion-mnist", tmp_path, download=False)
    images, labels = read_torchvision_split("fashion-mnist", root, train=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10


def test_labels_outside_the_classes_are_a_dataset_error():
    from mnist_dist.data.datasets import _as_data

    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    good, bad = torch.tensor([0, 1, 2, 9]), torch.tensor([0, 1, 2, 10])
    assert len(_as_data("mnist", (images, good, images, good)).test) == 4
    with pytest.raises(DatasetError, match="test labels run from 0 to 10, outside 0..9"):
        _as_data("mnist", (images, good, images, bad))


def test_an_idx_file_of_other_image_sizes_or_no_images_names_the_file(tmp_path):
    images, labels = fake_split(NUM_TEST, size=32)
    big = {"t10k-images-idx3-ubyte": idx_bytes(images[:, 0], files.IMAGES_MAGIC)}
    assert_reading_fails(tmp_path / "big", big, "t10k-images-idx3-ubyte holds 32x32 images, not 28x28", train=False)
    empty = {
        "t10k-images-idx3-ubyte": idx_bytes(np.zeros((0, 28, 28), np.uint8), files.IMAGES_MAGIC),
        "t10k-labels-idx1-ubyte": idx_bytes(np.zeros(0, np.uint8), files.LABELS_MAGIC),
    }
    assert_reading_fails(tmp_path / "empty", empty, "t10k-images-idx3-ubyte holds no images", train=False)
