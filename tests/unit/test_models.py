"""Every model maps a batch of the dataset's images to (N, classes) logits."""

import pytest
import torch
from torch import nn

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


def test_eval_flip_averages_each_image_with_its_mirror_and_keeps_the_weights_layout():
    info = INFO["fashion-mnist"]
    torch.manual_seed(0)
    plain = build_model("cnn", info)
    flipping = build_model("cnn", info, eval_flip=True)
    assert list(flipping.state_dict()) == list(plain.state_dict())  # one weights file for both
    flipping.load_state_dict(plain.state_dict())
    images = torch.randn(5, info.channels, info.height, info.width)
    plain.train(), flipping.train()
    torch.testing.assert_close(flipping(images), plain(images))  # training sees single views
    plain.eval(), flipping.eval()
    mirrored = (plain(images) + plain(images.flip(3))) / 2
    torch.testing.assert_close(flipping(images), mirrored)
    assert not torch.allclose(mirrored, plain(images))  # the mirror view changes the logits


def test_cnn_deep_is_cnn_wide_with_a_stride_1_convolution_in_each_stage():
    info = INFO["fashion-mnist"]

    def convolutions(name: str) -> list[tuple[int, int, int]]:
        return [
            (m.in_channels, m.out_channels, m.stride[0]) for m in build_model(name, info) if isinstance(m, nn.Conv2d)
        ]

    assert convolutions("cnn-wide") == [(1, 32, 2), (32, 64, 2), (64, 128, 2)]
    assert convolutions("cnn-deep") == [(1, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]
    # The cnns' weights keep their names (checkpoints written before cnn-deep load): conv, BN, ReLU per stage.
    assert [key for key in build_model("cnn", info).state_dict() if key.endswith("weight")] == [
        "0.weight",
        "1.weight",
        "3.weight",
        "4.weight",
        "6.weight",
        "7.weight",
        "10.weight",
        "11.weight",
        "13.weight",
    ]
