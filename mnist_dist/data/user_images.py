"""A user's image files made into a dataset's images (for evaluate.py --predict and load_model's preprocess).

One choice, `--prepare` (PREPARATIONS), says how:

    none    the image is already in the dataset's format (its size and channels; for the grayscale sets
            light ink on black, as MNIST): taken as it is, as the exported program and the plain
            safetensors snippet take it
    photo   photos and drawings, which look nothing like MNIST until they are prepared the way MNIST
            was: grayscale, white ink on black, the ink's bounding box scaled into 20x20 (keeping its
            aspect ratio) and placed in a 28x28 field so that its centre of mass is the centre.
            Fashion-MNIST's products were scaled to fill the field (longest side 28), so theirs is
            too. CIFAR-10 models get the image resized to 32x32 RGB
    auto    none for an image in the dataset's format, photo for any other (the default)

Normalization comes after (data/images.Normalizer).
"""

import os
import stat
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_dist.config import PREPARATIONS
from mnist_dist.data.images import DatasetInfo
from mnist_dist.errors import UserError, first_line

FIELD = 28  # side of the MNIST-family images
BOX = {"fashion-mnist": 28}  # side of the box the object is scaled into; MNIST's digits (and ours): 20
INK_THRESHOLD = 0.2  # pixels above this fraction of the brightest ink count for the bounding box


def flatten_alpha(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas filled by the colour that contrasts with the ink.

    A drawing saved with a transparent background has no background colour of its own: dark
    ink gets white paper, light ink gets black.
    """
    if "A" not in image.getbands() and image.mode != "P":
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255
    gray = np.asarray(rgba.convert("L"), dtype=np.float64)
    ink_level = (gray * alpha).sum() / max(alpha.sum(), 1e-9)
    paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if ink_level < 128 else (0, 0, 0, 255))
    return Image.alpha_composite(paper, rgba).convert("RGB")


def border_level(gray: np.ndarray) -> float:
    """The background's gray level (0..255): the median of the image's outermost pixels."""
    return float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))


def in_dataset_format(image: Image.Image, info: DatasetInfo) -> bool:
    """Whether `image` is already one of the dataset's images: their size, grayscale (mode L) for the
    MNIST family or RGB for CIFAR-10, and for the grayscale sets a dark background (light ink on black)."""
    if image.size != (info.width, info.height) or image.mode != ("L" if info.channels == 1 else "RGB"):
        return False
    return info.channels == 3 or border_level(np.asarray(image, dtype=np.float64)) <= 127


def check_prepare(prepare: str) -> None:
    """A one-line UserError unless `prepare` is one of PREPARATIONS."""
    if prepare not in PREPARATIONS:
        raise UserError(f"prepare must be one of {', '.join(PREPARATIONS)}, got {prepare!r}")


def resolve(prepare: str, image: Image.Image, info: DatasetInfo) -> str:
    """What `prepare` (one of PREPARATIONS) means for this image: "none" or "photo"."""
    check_prepare(prepare)
    if prepare == "auto":
        return "none" if in_dataset_format(image, info) else "photo"
    return prepare


def mnist_field(image: Image.Image, box: int = 20) -> np.ndarray:
    """uint8 (28, 28): white ink on black, its bounding box scaled into box x box, centred by mass."""
    gray = np.asarray(flatten_alpha(image).convert("L"), dtype=np.float64)
    background = border_level(gray)
    if background > 127:  # dark ink on light paper: turn it into MNIST's light ink on dark
        gray, background = 255 - gray, 255 - background
    ink = np.clip(gray - background, 0, None)  # grey paper in a photo becomes black
    if ink.max() <= 0:
        raise UserError("no ink found: the image is one flat colour")
    ink = ink / ink.max()
    rows, columns = np.nonzero(ink > INK_THRESHOLD)
    ink = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    height, width = ink.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL sizes are (width, height)
    glyph = Image.fromarray((ink * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    glyph = np.asarray(glyph, dtype=np.float64)
    # Put the glyph's centre of mass on the field's centre, keeping the whole box inside the field.
    mass_y, mass_x = (np.indices(glyph.shape) * glyph).reshape(2, -1).sum(axis=1) / glyph.sum()
    centre = (FIELD - 1) / 2
    top = int(np.clip(round(centre - mass_y), 0, FIELD - glyph.shape[0]))
    left = int(np.clip(round(centre - mass_x), 0, FIELD - glyph.shape[1]))
    field = np.zeros((FIELD, FIELD))
    field[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph
    return field.round().clip(0, 255).astype(np.uint8)


# What a path that is not a regular file is, for the one line that refuses it.
NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: Path) -> IO[bytes]:
    """`path` opened for reading, if it is a regular file; anything else is a one-line UserError.

    Opened without blocking, then checked: open() of a FIFO waits for a writer, for good if none comes,
    and a device may never end (/dev/zero) or wait for input (a terminal); so only a regular file is read.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in NOT_REGULAR if test(mode)), "a device")
            raise UserError(f"{path}: not an image file but {kind}; pass image files (PNG, JPEG) or folders of them")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def open_image(path: Path) -> Image.Image:
    """The image in `path`, turned upright, or a one-line UserError naming the file."""
    try:
        with open_regular(path) as file, Image.open(file) as opened:
            image = ImageOps.exif_transpose(opened)  # phone photos: apply the camera's rotation
            image.load()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Image.DecompressionBombError:  # more pixels than PIL will decode: a decompression bomb, or a huge scan
        raise UserError(
            f"{path}: too large to classify (over {Image.MAX_IMAGE_PIXELS:,} pixels); pass a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        reason = "not an image PIL can read" if isinstance(error, UnidentifiedImageError) else first_line(error)
        raise UserError(f"{path}: cannot read it as an image ({reason}); pass a PNG or JPEG file") from None
    return image


def pixels(image: Image.Image, info: DatasetInfo, prepare: str = "auto") -> torch.Tensor:
    """uint8 (C, H, W): `image` made into one of the images of the dataset `info` describes, as `prepare` says."""
    if resolve(prepare, image, info) == "none":
        return as_is(image, info)
    return photo(image, info)


def as_is(image: Image.Image, info: DatasetInfo) -> torch.Tensor:
    """uint8 (C, H, W): the image's own pixels, in the dataset's channels; its size must be the dataset's."""
    if image.size != (info.width, info.height):
        raise UserError(
            f"the image is {image.size[0]}x{image.size[1]}, not {info.width}x{info.height} like the {info.name} "
            "images; prepare it as a photo (--prepare photo or auto) or resize it first"
        )
    mode = "L" if info.channels == 1 else "RGB"
    values = np.array(flatten_alpha(image).convert(mode), dtype=np.uint8)  # a copy: torch gets writable memory
    return torch.from_numpy(values).view(info.height, info.width, info.channels).permute(2, 0, 1)  # (C, H, W)


def photo(image: Image.Image, info: DatasetInfo) -> torch.Tensor:
    """uint8 (C, H, W): a photo or drawing prepared like the dataset's images (the module's docstring)."""
    if info.channels == 3:
        resized = flatten_alpha(image).resize((info.width, info.height), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(mnist_field(image, BOX.get(info.name, 20))).unsqueeze(0)  # (1, 28, 28)
