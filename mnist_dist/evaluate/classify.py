"""Classify a user's own image files with a trained model (evaluate.py --predict).

Each file is made into the training set's format as --prepare says (data/user_images.py: auto takes
an image already in that format as it is and prepares any other like a photo) and normalized like
the training images: the same `preprocess` that `load_model(path, prepare=...)` returns.
"""

import json
import sys
from pathlib import Path

import torch

from mnist_dist.data.user_images import open_image, pixels, resolve
from mnist_dist.errors import UserError
from mnist_dist.evaluate.trained_model import Preprocess, TrainedModel

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
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


@torch.inference_mode()
def classify(trained: TrainedModel, paths: list[str], as_json: bool, prepare: str = "auto") -> int:
    """Print the top classes of every file; return 0, or 2 when any file could not be classified."""
    model, preprocess, info = trained.model, Preprocess(trained.info, prepare), trained.info
    files = image_files(paths)
    if not files:
        raise UserError(f"no image files in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    results, failed = [], 0
    for path in files:
        try:
            image = open_image(path)
            prepared = resolve(prepare, image, info)  # "none" (taken as it is) or "photo"
            batch = preprocess(pixels(image, info, prepared))
        except UserError as error:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            failed += 1
            print(f"error: {message}", file=sys.stderr)
            results.append({"file": str(path), "error": message})
            continue
        probabilities = model(batch).float().softmax(dim=1)[0]
        top = probabilities.topk(min(TOP, len(probabilities)))
        ranked = [
            {"class": info.class_names[i], "index": i, "probability": p}
            for p, i in zip(top.values.tolist(), top.indices.tolist())
        ]
        results.append({"file": str(path), "prepared": prepared, "predictions": ranked})
        if not as_json:
            print(f"{path}: " + ", ".join(f"{row['class']} {row['probability']:.1%}" for row in ranked))
    if as_json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0  # the per-file errors were said above, one line each
