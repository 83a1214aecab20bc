"""Named datasets: each gives a train and a test ImageSet plus its DatasetInfo."""

from dataclasses import dataclass, replace
from pathlib import Path

from mnist_dist.data import digits
from mnist_dist.data.images import DatasetInfo, ImageSet
from mnist_dist.data.pickles import read_mnist_pkl
from mnist_dist.data.val_split import split_validation
from mnist_dist.errors import DatasetError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = digits.CLASS_NAMES

# Mean and std of each training set's pixels on the 0..1 scale (the values commonly published).
INFO = {
    "digits": DatasetInfo("digits", 1, 28, 28, 10, (digits.MEAN,), (digits.STD,), DIGIT_CLASSES),
    "mnist": DatasetInfo("mnist", 1, 28, 28, 10, (0.1307,), (0.3081,), DIGIT_CLASSES),
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, 28, 10, (0.2860,), (0.3530,), FASHION_CLASSES),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), CIFAR10_CLASSES
    ),
}
INFO["mnist-pkl"] = replace(INFO["mnist"], name="mnist-pkl")  # the same images, from another file


@dataclass
class Data:
    train: ImageSet  # the training samples (without the validation split)
    test: ImageSet
    info: DatasetInfo
    val: ImageSet | None = None  # held out of the training split (data/val_split.py); None with val_size 0


def load_dataset_main_first(config, accelerator) -> Data:
    """`load_dataset` for a job, its validation split held out: the main process downloads or unpacks
    first; the others then read."""
    with accelerator.main_process_first():
        data = load_dataset(
            config.dataset, config.data_dir, config.data_file, config.download and accelerator.is_main_process
        )
    train, val = split_validation(config.dataset, data.train, config.val_size, config.seed)
    return replace(data, train=train, val=val)


def load_dataset(name: str, data_dir: str, data_file: str, download: bool) -> Data:
    """Load a dataset into memory. Call it under `accelerator.main_process_first()` with
    `download` true on the main process only: the main process fetches or unpacks files (or
    writes the digits cache) while the others wait, then they read what it wrote."""
    root = Path(data_dir)
    if name == "digits":
        return _as_data(name, digits.load_digits(root))
    if name == "mnist-pkl":
        return _as_data(name, read_mnist_pkl(Path(data_file)))
    from mnist_dist.data import formats  # imports torchvision (about 1 s), which digits runs do without

    tv_root = formats.prepare_torchvision_files(name, root, download)
    arrays = (
        *formats.read_torchvision_split(name, tv_root, train=True),
        *formats.read_torchvision_split(name, tv_root, train=False),
    )
    return _as_data(name, arrays)


def _as_data(name: str, arrays: tuple) -> Data:
    train_images, train_labels, test_images, test_labels = arrays
    info = INFO[name]
    expected = (info.channels, info.height, info.width)
    for split, images in (("train", train_images), ("test", test_images)):
        if tuple(images.shape[1:]) != expected or len(images) == 0:
            raise DatasetError(
                f"{name}: the {split} split holds {len(images)} images of shape {tuple(images.shape[1:])}, "
                f"expected some of {expected}: the files are not {name}'s; replace them."
            )
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < info.num_classes:
            raise DatasetError(
                f"{name}: the {split} labels run from {int(labels.min())} to {int(labels.max())}, "
                f"outside 0..{info.num_classes - 1}: the label file is corrupt; replace it."
            )
    return Data(ImageSet(train_images, train_labels), ImageSet(test_images, test_labels), info)
