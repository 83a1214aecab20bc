"""Dataset pickles, read without letting them run code: CIFAR-10's batches and mnist.pkl.gz.

`pickle.load` will import and call anything a file names, so a downloaded pickle is a program.
`SafeUnpickler` allows only what a numpy array needs; `read_mnist_pkl` reads the single-file
mnist.pkl.gz of many tutorials (deeplearning.net, Nielsen's book) through it.
"""

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from mnist_dist.errors import DatasetError


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How Python 3 pickles bytes under protocol 2: _codecs.encode(text, "latin1"), and nothing else."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r} in _codecs.encode")
    return text.encode("latin1")


# All a pickled numpy array needs; numpy >= 2 moved numpy.core to numpy._core.
NUMPY_ARRAY_PARTS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts and numbers only: a dataset pickle must not run code."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # the classic files were pickled by Python 2
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in NUMPY_ARRAY_PARTS:
            raise DatasetError(
                f"refusing to load {self.path}: the file asks to import {module}.{name}, but "
                "dataset pickles contain only numpy arrays; replace it with a trusted copy"
            )
        return NUMPY_ARRAY_PARTS[module, name]


def read_mnist_pkl(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read mnist.pkl.gz (deeplearning.net / Nielsen) as train images, train labels, test images, test labels.

    The file holds (train, valid, test) splits of (float32 (n, 784) in 0..1, labels (n,));
    train + valid (50,000 + 10,000) give back the 60,000 training images of the original MNIST.
    """
    if not path.is_file():
        raise DatasetError(f"{path} not found; pass --data-file path/to/mnist.pkl.gz")
    try:
        with gzip.open(path, "rb") as stream:
            splits = SafeUnpickler(stream, path).load()
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{path} is not a readable gzip file ({error}); re-download mnist.pkl.gz") from None
    except Exception as error:
        raise DatasetError(f"{path} is not a valid pickle ({error}); re-download mnist.pkl.gz") from None
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise DatasetError(
            f"{path} should hold a tuple (train, valid, test), got {type(splits).__name__}; re-download mnist.pkl.gz"
        )
    (train_images, train_labels), (valid_images, valid_labels), (test_images, test_labels) = (
        _pkl_split(path, split, which) for split, which in zip(splits, ("train", "valid", "test"))
    )
    return torch.cat([train_images, valid_images]), torch.cat([train_labels, valid_labels]), test_images, test_labels


def _pkl_split(path: Path, split, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        images, labels = split
        images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64)
        found = f"images {images.shape} and labels {labels.shape}"
        valid = images.ndim == 2 and images.shape[1] == 28 * 28 and labels.shape == (len(images),)
    except (TypeError, ValueError) as error:
        found, valid = str(error), False
    if not valid:
        raise DatasetError(
            f"{path}: the {which} split should be (images (n, 784), labels (n,)), got {found}; re-download mnist.pkl.gz"
        )
    pixels = torch.from_numpy(images).mul(255).round().clamp(0, 255).to(torch.uint8)
    return pixels.reshape(-1, 1, 28, 28), torch.from_numpy(labels)
