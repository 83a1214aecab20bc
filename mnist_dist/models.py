"""Image classifiers by name. Each takes the dataset's input shape and returns logits (N, classes).

Models know nothing about devices, precision or processes: the trainer wraps them.
"""

from collections.abc import Callable

import torch
from torch import nn

from mnist_dist.data.images import DatasetInfo


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Flatten, then Linear layers of the given sizes with `activation` between them (not after the last)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def pixels(info: DatasetInfo) -> int:
    return info.channels * info.height * info.width


def linear(info: DatasetInfo) -> nn.Module:
    return mlp([pixels(info), info.num_classes])


def mlp_sigmoid(info: DatasetInfo) -> nn.Module:
    return mlp([pixels(info), 256, info.num_classes], activation=nn.Sigmoid)


def mlp_relu(info: DatasetInfo) -> nn.Module:
    return mlp([pixels(info), 128, 64, info.num_classes])


def mlp_wide(info: DatasetInfo) -> nn.Module:
    return mlp([pixels(info), 128, 256, info.num_classes])


def cifar_mlp(info: DatasetInfo) -> nn.Module:
    return mlp([pixels(info), 1000, 500, info.num_classes])


def lenet(info: DatasetInfo) -> nn.Module:
    """LeNet-style: two 5x5 conv + 2x2 max-pool stages, then fc 120-60-classes."""
    # 28x28 -> conv5 24 -> pool 12 -> conv5 8 -> pool 4: 12 * 4 * 4 = 192 features (300 for 32x32).
    height, width = (info.height - 4) // 2, (info.width - 4) // 2
    height, width = (height - 4) // 2, (width - 4) // 2
    return nn.Sequential(
        nn.Conv2d(info.channels, 6, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 12, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12 * height * width, 120),
        nn.ReLU(),
        nn.Linear(120, 60),
        nn.ReLU(),
        nn.Linear(60, info.num_classes),
    )


def strided_cnn(info: DatasetInfo, widths: tuple[int, int, int], head: int, deep: bool = False) -> nn.Sequential:
    """Three stages of `widths` channels, each a stride-2 3x3 conv+BN+ReLU (with `deep`, followed by a
    stride-1 one at the same width), then a `head`-unit BN+ReLU layer."""

    def conv(fan_in: int, fan_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(fan_in, fan_out, 3, stride, padding=1, bias=False), nn.BatchNorm2d(fan_out), nn.ReLU()]

    layers, fan_in = [], info.channels
    for fan_out in widths:
        layers += conv(fan_in, fan_out, stride=2) + (conv(fan_out, fan_out, stride=1) if deep else [])
        fan_in = fan_out
    # Each stage halves the side, rounding up: 28 -> 14 -> 7 -> 4 (32 -> 16 -> 8 -> 4).
    height, width = info.height, info.width
    for _ in range(3):
        height, width = (height + 1) // 2, (width + 1) // 2
    return nn.Sequential(
        *layers,
        nn.Flatten(),  # (N, widths[-1], 4, 4) -> (N, 16 * widths[-1])
        nn.Linear(widths[-1] * height * width, head, bias=False),
        nn.BatchNorm1d(head),
        nn.ReLU(),
        nn.Linear(head, info.num_classes),
    )


def cnn(info: DatasetInfo) -> nn.Sequential:
    """The default: 16, 32 and 64 channels and a 128-unit head.

    Small enough to train an epoch of Fashion-MNIST in seconds on two CPU cores; BatchNorm lets it
    take a large learning rate (onecycle, peak 0.2).
    """
    return strided_cnn(info, (16, 32, 64), 128)


def cnn_wide(info: DatasetInfo) -> nn.Sequential:
    """The default's layout at twice the channels (32, 64, 128) and a 256-unit head: about 4x the
    arithmetic, 2x the time per epoch on two CPU cores, for the longer Fashion-MNIST recipes."""
    return strided_cnn(info, (32, 64, 128), 256)


def cnn_deep(info: DatasetInfo) -> nn.Sequential:
    """cnn-wide with a second, stride-1 3x3 conv in each stage (6 convolutions): 3.3x cnn-wide's arithmetic
    (51.7 MFLOP a training sample), which its larger convolutions run at about 80% of the matmul peak on
    two CPU cores; for the 5-minute Fashion-MNIST recipe (configs/fashion-94.yaml)."""
    return strided_cnn(info, (32, 64, 128), 256, deep=True)


class MirrorAveraged(nn.Sequential):
    """The same layers (and state_dict keys) as the nn.Sequential it is made from; in eval mode its logits
    are the mean of those of each image and of its mirror image: test-time augmentation for classes that
    a horizontal flip does not change (clothing, CIFAR-10), one forward pass over both views."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(images)
        # chunk, not len(images): len() would fix torch.export's batch size to the example's
        first, mirrored = super().forward(torch.cat([images, images.flip(3)])).chunk(2)  # (N, classes) each
        return (first + mirrored) / 2


MODELS: dict[str, Callable[[DatasetInfo], nn.Sequential]] = {
    "cnn": cnn,
    "cnn-wide": cnn_wide,
    "cnn-deep": cnn_deep,
    "lenet": lenet,
    "linear": linear,
    "mlp": mlp_relu,
    "mlp-sigmoid": mlp_sigmoid,
    "mlp-wide": mlp_wide,
    "cifar-mlp": cifar_mlp,
}


def build_model(name: str, info: DatasetInfo, eval_flip: bool = False) -> nn.Module:
    """The architecture `name` for `info`'s images; `eval_flip` (--eval-flip) evaluates mirrored views too."""
    model = MODELS[name](info)
    return MirrorAveraged(*model) if eval_flip else model
