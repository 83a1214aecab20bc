"""Every model maps a batch of the dataset's images to (N, classes) logits."""

import pytest
import torch

from mnist_dist import config
from mnist_dist.data.datasets import INFO
from mnist_dist.models import MODELS, build_model


def test_registries_match_the_names_config_validates():
    assert set(MODELS) == set(config.MODELS)
    assert set(INFO) == set(config.DATASETS)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape(name, dataset):
    info = INFO[dataset]
    model = build_model(name, info).eval()
    logits = model(torch.randn(3, info.channels, info.height, info.width))
    assert logits.shape == (3, info.num_classes)


def test_classic_layer_sizes():
    mnist = INFO["mnist"]
    assert build_model("lenet", mnist)[7].in_features == 192  # 12 channels x 4 x 4
    assert [m.out_features for m in build_model("mlp-wide", mnist) if isinstance(m, torch.nn.Linear)] == [128, 256, 10]
    cifar = [m.out_features for m in build_model("cifar-mlp", INFO["cifar10"]) if isinstance(m, torch.nn.Linear)]
    assert cifar == [1000, 500, 10]
    assert isinstance(build_model("mlp-sigmoid", mnist)[2], torch.nn.Sigmoid)
