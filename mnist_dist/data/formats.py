"""Dataset files in their official formats, read into uint8 images (N, C, H, W) and int64 labels (N,).

IDX files (MNIST, Fashion-MNIST) and CIFAR-10's python batches live in torchvision's layout under
a data dir; `prepare_torchvision_files` puts them there (main process only), then every rank calls
`read_torchvision_split`. The single-file mnist.pkl.gz of many tutorials is read by data/pickles.py.
"""

import gzip
import math
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torchvision

from mnist_dist.data.pickles import SafeUnpickler
from mnist_dist.errors import DatasetError

# Folders where distributions install dataset files; searched before any download.
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}

IDX_CLASSES = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}
IDX_FILES = [f"{split}-{kind}" for split in ("train", "t10k") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: unsigned bytes, 3 or 1 dimensions

CIFAR = torchvision.datasets.CIFAR10
CIFAR_FILES = [name for name, _md5 in CIFAR.train_list + CIFAR.test_list] + [CIFAR.meta["filename"]]

INSTALL_HINTS = {
    "mnist": "place the 4 files in DATA_DIR/MNIST/raw/ or directly in DATA_DIR, or pass --data-dir",
    "fashion-mnist": "place the 4 files in DATA_DIR/FashionMNIST/raw/ or directly in DATA_DIR, or pass "
    "--data-dir; on Debian: apt-get install dataset-fashion-mnist",
    "cifar10": "place cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/ folder) in DATA_DIR, "
    "or pass --data-dir",
}


def prepare_torchvision_files(name: str, data_dir: Path, download: bool) -> Path:
    """Make sure `name`'s files sit in torchvision's layout under `data_dir`; return the root for torchvision.

    Local copies (raw or .gz, in torchvision's layout, a flat folder, or SYSTEM_DIRS) win over a
    download. Fast and idempotent once the files are in place. Call on the main process only.
    """
    if name in IDX_CLASSES:
        _prepare_idx(name, data_dir, download)
    elif name == "cifar10":
        _prepare_cifar(data_dir, download)
    else:
        raise DatasetError(f"unknown dataset {name!r}: expected one of mnist, fashion-mnist, cifar10")
    return data_dir


def _prepare_idx(name: str, data_dir: Path, download: bool) -> None:
    raw_dir = data_dir / IDX_CLASSES[name].__name__ / "raw"
    if all((raw_dir / file).is_file() for file in IDX_FILES):
        return
    folders = [raw_dir, data_dir, *SYSTEM_DIRS.get(name, [])]
    for folder in folders:
        # All 4 files from one folder, so a split never mixes two copies of a dataset.
        sources = [_raw_or_gz(folder / file) for file in IDX_FILES]
        if all(sources):
            _make_writable_dir(raw_dir, data_dir)
            for source, file in zip(sources, IDX_FILES):
                if not (raw_dir / file).is_file():
                    _install(source, raw_dir / file)
            return
    wanted = ", ".join(f"{file}(.gz)" for file in IDX_FILES)
    _download_or_fail(name, data_dir, download, f"{wanted} in {', '.join(map(str, folders))}")


def _prepare_cifar(data_dir: Path, download: bool) -> None:
    folder, archive = data_dir / CIFAR.base_folder, data_dir / CIFAR.filename
    if all((folder / file).is_file() for file in CIFAR_FILES):
        return
    if archive.is_file():
        _make_writable_dir(folder, data_dir)
        _extract_cifar(archive, folder)
        return
    _download_or_fail("cifar10", data_dir, download, f"{', '.join(CIFAR_FILES)} in {folder}, and {archive}")


def _raw_or_gz(path: Path) -> Path | None:
    gz = path.with_name(path.name + ".gz")
    return path if path.is_file() else gz if gz.is_file() else None


def _install(source: Path, dest: Path) -> None:
    """Copy or gunzip `source` to `dest` through a temp file, so a crash never leaves half a file.

    No md5 check: re-compressed .gz files (Debian's, for one) differ from torchvision's list, while
    the IDX contents inside are standard and get validated when read.
    """
    opener = gzip.open if source.suffix == ".gz" else open
    fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, opener(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(temp, dest)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"cannot unpack {source} into {dest} ({error}); re-download or replace {source}") from None
    finally:
        Path(temp).unlink(missing_ok=True)


def _extract_cifar(archive: Path, folder: Path) -> None:
    """Extract the batches into a scratch folder next to `folder`, then move each one into place."""
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".cifar-extract-") as scratch:
        try:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    escapes = member.name.startswith("/") or ".." in Path(member.name).parts
                    if escapes or not (member.isfile() or member.isdir()):
                        raise DatasetError(
                            f"refusing to extract {archive}: member {member.name!r} is not a plain "
                            "file inside the archive; replace it with the official archive"
                        )
                # filter="data" re-checks the same and keeps Python >= 3.12 from warning.
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DatasetError(f"cannot extract {archive} ({error}); re-download or replace it") from None
        for file in CIFAR_FILES:
            extracted = Path(scratch) / CIFAR.base_folder / file
            if not extracted.is_file():
                raise DatasetError(f"{archive} lacks {CIFAR.base_folder}/{file}; re-download or replace it")
            if not (folder / file).is_file():
                os.replace(extracted, folder / file)


def _make_writable_dir(folder: Path, data_dir: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        problem = "" if os.access(folder, os.W_OK) else " (permission denied)"
    except OSError as error:
        problem = f" ({error})"
    if problem:
        raise DatasetError(f"cannot write dataset files under {data_dir}{problem}; pass a writable --data-dir")


def _download_or_fail(name: str, data_dir: Path, download: bool, tried: str) -> None:
    if download:
        _make_writable_dir(data_dir, data_dir)
        dataset_class = IDX_CLASSES.get(name, CIFAR)
        try:
            dataset_class(data_dir, train=True, download=True)  # torchvision downloads, checks md5s, unpacks
            return
        except Exception as error:  # no network, a mirror down, a bad checksum: all fixed the same way
            reason = f"the download failed ({type(error).__name__}: {' '.join(str(error).split())})"
    else:
        reason = "downloading is off"
    raise DatasetError(
        f"{name}: dataset files not found and {reason}. Looked for {tried}. To supply them: {INSTALL_HINTS[name]}"
    )


def read_torchvision_split(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (images uint8 (N, C, H, W), labels int64 (N,)), from files prepared under `root`."""
    if name == "cifar10":
        return _read_cifar(root, train)
    if name not in IDX_CLASSES:
        raise DatasetError(f"unknown dataset {name!r}: expected one of mnist, fashion-mnist, cifar10")
    dataset_class = IDX_CLASSES[name]
    raw_dir, prefix = root / dataset_class.__name__ / "raw", "train" if train else "t10k"
    images_path, labels_path = raw_dir / f"{prefix}-images-idx3-ubyte", raw_dir / f"{prefix}-labels-idx1-ubyte"
    # torchvision only asserts on bad files; check first so the user hears which file and why.
    num_images = _check_idx(images_path, IMAGES_MAGIC, dims=3)
    num_labels = _check_idx(labels_path, LABELS_MAGIC, dims=1)
    if num_images != num_labels:
        raise DatasetError(
            f"{images_path} holds {num_images} images but {labels_path} holds {num_labels} "
            "labels; re-download or replace both files"
        )
    dataset = dataset_class(root, train=train, download=False)
    return dataset.data.unsqueeze(1), dataset.targets.to(torch.int64)  # (N, 28, 28) -> (N, 1, 28, 28)


def _check_idx(path: Path, magic: int, dims: int) -> int:
    """Check an IDX file's magic number and that its size matches its header; return the item count."""
    kind, fix = "images" if dims == 3 else "labels", "re-download it or replace it with an intact copy"
    try:
        with open(path, "rb") as file:
            header = file.read(4 + 4 * dims)  # magic, then one big-endian uint32 per dimension
        size = path.stat().st_size
    except OSError as error:
        raise DatasetError(f"cannot read {path} ({error}); prepare the dataset first or supply the file") from None
    if len(header) < 4 + 4 * dims:
        raise DatasetError(f"{path} is too short to hold an IDX header; {fix}")
    found, count, *item_shape = struct.unpack(f">{1 + dims}I", header)
    if found != magic:
        raise DatasetError(
            f"{path} is not an IDX {kind} file: magic number 0x{found:08x}, expected 0x{magic:08x}; {fix}"
        )
    item_size = math.prod(item_shape)  # 28 * 28 bytes per image, 1 per label
    if size != len(header) + count * item_size:
        actual = (size - len(header)) // max(item_size, 1)
        raise DatasetError(
            f"{path} holds {actual} {kind} but its header declares {count} "
            f"({size} bytes, expected {len(header) + count * item_size}); {fix}"
        )
    if count == 0:
        raise DatasetError(f"{path} holds no {kind}; {fix}")
    if dims == 3 and item_shape != [28, 28]:  # what every MNIST-family model here is built for
        raise DatasetError(f"{path} holds {item_shape[0]}x{item_shape[1]} images, not 28x28; {fix}")
    return count


def _read_cifar(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR-10 batches the way torchvision 0.29's CIFAR10 does, without its class.

    CIFAR10.__init__ md5-checks every batch (and _load_meta checks batches.meta) against the
    official files, so any re-pickled copy fails with "Dataset not found or corrupted", and it
    loads them with plain pickle.load. We take its file names, unpickle through SafeUnpickler,
    and keep the rows' own layout: 1024 red, 1024 green, 1024 blue bytes = (3, 32, 32).
    """
    images, labels = [], []
    for file, _md5 in CIFAR.train_list if train else CIFAR.test_list:
        path = root / CIFAR.base_folder / file
        try:
            with open(path, "rb") as stream:
                batch = SafeUnpickler(stream, path).load()
            data, targets = (batch.get(key, batch.get(key.encode())) for key in ("data", "labels"))
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (len(targets), 3072)):
                raise ValueError(f"expected uint8 data (n, 3072) and n labels, got {type(data).__name__}")
        except DatasetError:
            raise
        except Exception as error:
            raise DatasetError(f"cannot read CIFAR-10 batch {path} ({error}); re-download or replace it") from None
        images.append(data)
        labels.extend(targets)
    return torch.from_numpy(np.concatenate(images)).reshape(-1, 3, 32, 32), torch.tensor(labels, dtype=torch.int64)
