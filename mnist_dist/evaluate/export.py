"""The trained model as a torch.export program (evaluate.py --export) that plain PyTorch loads
without this project: uint8 pixels in, logits out, the training set's normalization inside.

    program = torch.export.load("model.pt2").module()
    logits = program(images)  # uint8 (N, C, H, W), any N

The program takes images in the dataset's format, as they are (`--prepare none`): it does not crop,
invert or centre a photo, which has no fixed shape to export. A photo is prepared first, e.g. by
load_model's `preprocess.pixels(image)`, the uint8 pixels that `--predict` classifies.
"""

import io
from pathlib import Path

import torch

from mnist_dist.atomic import write_atomically
from mnist_dist.data.images import DatasetInfo, Normalizer
from mnist_dist.evaluate.trained_model import TrainedModel


class Pixels(torch.nn.Module):
    """uint8 pixels (N, C, H, W) -> logits: the training set's normalization, then the model."""

    def __init__(self, model: torch.nn.Module, info: DatasetInfo):
        super().__init__()
        self.model = model
        normalize = Normalizer(info, torch.device("cpu"))  # the numbers training and evaluation use
        self.register_buffer("scale", normalize.scale)
        self.register_buffer("shift", normalize.shift)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.float().mul(self.scale).add(self.shift))


def export_program(trained: TrainedModel, path: Path) -> None:
    """A torch.export program of the model with its normalization: uint8 pixels (N, C, H, W) in, logits
    out, any batch size. `torch.export.load(path).module()` runs it without this project."""
    info = trained.info
    module = Pixels(trained.model, info).eval()
    # An example batch of 2: torch.export fixes a dimension of size 0 or 1; Dim.AUTO lets the batch vary.
    example = torch.zeros(2, info.channels, info.height, info.width, dtype=torch.uint8)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_atomically(path, buffer.getvalue(), fix="free space or pass another --export path")
