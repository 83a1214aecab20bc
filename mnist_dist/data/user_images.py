"""A user's image files prepared like a dataset's images (for classify_images.py and load_model's preprocess).

Photos and drawings look nothing like MNIST until they are prepared the way MNIST was:
grayscale, white ink on black, the ink's bounding box scaled into 20x20 (keeping its aspect
ratio) and placed in a 28x28 field so that its centre of mass is the centre. Fashion-MNIST's
products were scaled to fill the field (longest side 28), so theirs is too. CIFAR-10 models get
the image resized to 32x32 RGB. Normalization comes after (data/images.Normalizer).
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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


def mnist_field(image: Image.Image, box: int = 20) -> np.ndarray:
    """uint8 (28, 28): white ink on black, its bounding box scaled into box x box, centred by mass."""
    gray = np.asarray(flatten_alpha(image).convert("L"), dtype=np.float64)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = np.median(border)
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


def prepare(path: Path, info: DatasetInfo) -> torch.Tensor:
    """uint8 (C, H, W) in the training set's format, or a one-line UserError naming the file."""
    image = open_image(path)
    try:
        return pixels(image, info)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def open_image(path: Path) -> Image.Image:
    """The image in `path`, turned upright, or a one-line UserError naming the file."""
    try:
        with Image.open(path) as opened:
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


def pixels(image: Image.Image, info: DatasetInfo) -> torch.Tensor:
    """uint8 (C, H, W): `image` prepared like the images of the dataset `info` describes."""
    if info.channels == 3:
        resized = flatten_alpha(image).resize((info.width, info.height), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(mnist_field(image, BOX.get(info.name, 20))).unsqueeze(0)  # (1, 28, 28)
