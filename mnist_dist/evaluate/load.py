"""A trained model, ready to use outside training: `from mnist_dist import load_model`.

    model, preprocess = load_model("runs/<name>")          # or a .safetensors file, or a checkpoint folder
    probabilities = model(preprocess(Image.open("7.png"))).softmax(dim=1)

The weights file carries what the model needs (weights.py): its architecture's name, the input
shape, the class names and the training set's mean and std, so `preprocess` prepares images
exactly as training did. `export_program` writes the same as a torch.export program that plain
PyTorch loads, normalization included.
"""

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from mnist_dist.atomic import write_atomically
from mnist_dist.data.images import DatasetInfo, Normalizer
from mnist_dist.data.user_images import pixels
from mnist_dist.errors import UserError
from mnist_dist.evaluate.trained_run import TrainedRun, build_trained_model, load_run


@dataclass
class Preprocess:
    """PIL image(s) or uint8 pixels (C, H, W) or (N, C, H, W) -> the float32 batch (N, C, H, W) the model takes.

    A PIL image is prepared like the training images first (a photo of a digit becomes white ink
    centred on black, 28x28: data/user_images.py); pixels are taken as they are.
    """

    info: DatasetInfo  # input shape, mean and std, class names

    def __call__(self, images) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            images = torch.stack([pixels(image, self.info) for image in images])
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise UserError("preprocess takes PIL images or uint8 pixels (C, H, W) or (N, C, H, W)")
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        expected = (self.info.channels, self.info.height, self.info.width)
        if batch.dim() != 4 or tuple(batch.shape[1:]) != expected:
            raise UserError(f"the model takes images of {expected} (C, H, W), got {tuple(images.shape)}")
        return Normalizer(self.info, batch.device)(batch)


def ready_model(run: TrainedRun) -> tuple[torch.nn.Module, Preprocess]:
    return build_trained_model(run), Preprocess(run.info)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Preprocess]:
    """The model in `path` (a run directory, a checkpoint folder or a .safetensors file), on `device`
    in eval mode, and the `preprocess` that turns images into its input. Bad input: a UserError."""
    model, preprocess = ready_model(load_run(str(path)))
    return model.to(device), preprocess


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


def export_program(run: TrainedRun, path: Path) -> None:
    """A torch.export program of the model with its normalization: uint8 pixels (N, C, H, W) in, logits
    out, any batch size. `torch.export.load(path).module()` runs it without this project."""
    info = run.info
    module = Pixels(build_trained_model(run), info).eval()
    example = torch.zeros(2, info.channels, info.height, info.width, dtype=torch.uint8)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_atomically(path, buffer.getvalue(), fix="free space or pass another --export path")
