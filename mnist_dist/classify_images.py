"""Classify a user's own image files with a trained model.

Photos and drawings look nothing like MNIST until they are prepared the way MNIST was:
grayscale, white ink on black, the ink's bounding box scaled into 20x20 (keeping its aspect
ratio) and placed in a 28x28 field so that its centre of mass is the centre. Fashion-MNIST's
products were scaled to fill the field (longest side 28), so theirs is too. CIFAR-10 models get
the image resized to 32x32 RGB. Then all are normalized like the training set.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_dist.data.images import DatasetInfo, Normalizer
from mnist_dist.errors import UserError, first_line
from mnist_dist.trained_run import TrainedRun, build_trained_model

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FIELD = 28  # side of the MNIST-family images
BOX = {"fashion-mnist": 28}  # side of the box the object is scaled into; MNIST's digits (and ours): 20
INK_THRESHOLD = 0.2  # pixels above this fraction of the brightest ink count for the bounding box
TOP = 3  # classes printed per file


def image_files(paths: list[str]) -> list[Path]:
    """Files as given (whatever their name, so a wrong file gets its own error) and the images inside folders."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(file for file in path.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file())
        else:
            files.append(path)
    return files


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
    if info.channels == 3:
        resized = flatten_alpha(image).resize((info.width, info.height), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    try:
        field = mnist_field(image, BOX.get(info.name, 20))
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return torch.from_numpy(field).unsqueeze(0)  # (1, 28, 28)


@torch.inference_mode()
def classify(run: TrainedRun, paths: list[str], as_json: bool) -> int:
    """Print the top classes of every file; return 0, or 2 when any file could not be classified."""
    model = build_trained_model(run)
    info = run.info
    normalize = Normalizer(info, torch.device("cpu"))
    files = image_files(paths)
    if not files:
        raise UserError(f"no image files in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    results, failed = [], 0
    for path in files:
        try:
            image = prepare(path, info)
        except UserError as error:
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"file": str(path), "error": str(error)})
            continue
        probabilities = model(normalize(image.unsqueeze(0))).float().softmax(dim=1)[0]
        top = probabilities.topk(min(TOP, len(probabilities)))
        ranked = [
            {"class": info.class_names[i], "index": i, "probability": p}
            for p, i in zip(top.values.tolist(), top.indices.tolist())
        ]
        results.append({"file": str(path), "predictions": ranked})
        if not as_json:
            print(f"{path}: " + ", ".join(f"{row['class']} {row['probability']:.1%}" for row in ranked))
    if as_json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0  # the per-file errors were said above, one line each
