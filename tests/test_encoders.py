"""Every registered encoder: annotation-vector shapes, frozen by default, fine-tuning unfreezes the top."""
import os

import pytest
import torch

from conftest import ASSETS
from showattend.captioning.encoders import ENCODERS, Encoder
from showattend.captioning.images import load_image

GRID = {"efficientnet_lite0": 32, "resnet101": 32, "vgg19": 16}  # stride of the annotation grid


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_annotation_shape_and_frozen(name):
    enc = Encoder(name, pretrained=(name == "efficientnet_lite0"))  # torchvision weights need the network
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a = enc(x)
    s = GRID[name]
    assert a.shape == (2, (64 // s) * (96 // s), ENCODERS[name].dim)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.net.training  # frozen batch norm stays in eval mode while the decoder trains


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_fine_tune_unfreezes_only_top_blocks(name):
    enc = Encoder(name, pretrained=False, fine_tune_blocks=1)
    trainable = [n for n, p in enc.net.named_parameters() if p.requires_grad]
    frozen = [n for n, p in enc.net.named_parameters() if not p.requires_grad]
    assert trainable and frozen


def test_lite0_weights_and_normalisation_recognise_the_espresso():
    """The packaged ImageNet weights with their [-1, 1] input scaling: coffee.jpg is ImageNet class 967."""
    enc = Encoder("efficientnet_lite0")
    x = load_image(os.path.join(ASSETS, "photos", "coffee.jpg"), 224).unsqueeze(0)
    with torch.no_grad():
        feats = enc(x)  # (1, 49, 1280)
        probs = enc.net._fc(feats.mean(1)).softmax(-1)
    assert int(probs.argmax()) == 967 and float(probs.max()) > 0.5  # "espresso"


def test_unknown_encoder_and_missing_weights(tmp_path):
    with pytest.raises(KeyError, match="unknown encoder"):
        Encoder("alexnet")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Encoder("resnet101", weights=str(tmp_path / "nope.pth"))


def test_local_weights_file_is_loaded(tmp_path):
    from showattend._compat import import_torchvision

    full = import_torchvision().models.resnet101(weights=None)
    torch.save(full.state_dict(), tmp_path / "r101.pth")
    enc = Encoder("resnet101", weights=str(tmp_path / "r101.pth"))
    assert torch.equal(enc.net[0].weight, full.conv1.weight)
