"""EfficientNet-Lite0 as a small self-contained PyTorch module.

Written here rather than imported from ``efficientnet-lite-pytorch`` (an unmaintained 2020
package): only plain ``torch.nn`` is used, so it cannot break with a new torch, and it works at
any input size. Its layers match the TensorFlow reference (``efficientnet_lite_builder.py``):

- ReLU6 instead of swish, no squeeze-and-excitation, stem (32) and head (1280) not scaled;
- BatchNorm eps 1e-3 (TensorFlow's; PyTorch's default 1e-5 would shift every activation);
- TensorFlow "SAME" padding, which for stride 2 pads one pixel more on the bottom/right than on
  the top/left. The converted ImageNet weights were trained with it; symmetric padding would
  shift every strided feature map by half a pixel.

Parameter names are this module's own; :func:`convert_state_dict` maps the key names of the
published ``efficientnet-lite0-57934424.pth`` (lukemelas/EfficientNet-PyTorch style) onto them.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99, in PyTorch's convention
NUM_FEATURES = 1280
DROPOUT = 0.2  # before the classifier, as in the reference
DROP_CONNECT = 0.2  # stochastic depth, scaled linearly with block index

# (repeats, kernel, stride, expand ratio, in, out) for each stage of Lite0
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed for each input's size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        # stride 1 with an odd kernel is symmetric: ordinary padding does it, no F.pad needed
        pad = kernel // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride, pad, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                               (x.shape[-2], self.kernel_size[0], self.stride[0])):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class ConvBN(nn.Sequential):
    """Convolution, BatchNorm, then ReLU6 unless ``act`` is False."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        layers = [("conv", SameConv2d(in_ch, out_ch, kernel, stride, groups)),
                  ("bn", nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM))]
        if act:
            layers.append(("act", nn.ReLU6(inplace=True)))
        super().__init__(OrderedDict(layers))


class MBConv(nn.Module):
    """Inverted residual block (no squeeze-and-excitation in the Lite variants)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int,
                 drop_connect: float) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = ConvBN(in_ch, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        if not self.residual:
            return out
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = torch.empty(out.shape[0], 1, 1, 1, dtype=out.dtype, device=out.device)
            out = out * mask.bernoulli_(keep) / keep
        return out + x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``features`` (the backbone) then ``classifier`` (dropout, Linear).

    ``forward`` returns logits of shape (N, num_classes) for any input of at least 32x32.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        n_blocks = sum(stage[0] for stage in STAGES)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, in_ch, out_ch in STAGES:
            for j in range(repeats):
                rate = DROP_CONNECT * len(blocks) / n_blocks
                blocks.append(MBConv(in_ch if j == 0 else out_ch, out_ch, k, s if j == 0 else 1,
                                     e, rate))
        self.features = nn.Sequential(OrderedDict([
            ("stem", ConvBN(3, 32, 3, stride=2)),
            ("blocks", nn.Sequential(*blocks)),
            ("head", ConvBN(320, NUM_FEATURES, 1)),
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten(1)),
        ]))
        self.classifier = new_head(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # the reference's random initialisation (used when no weights are loaded)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "EfficientNetLite0":
        super().train(mode)
        if mode:
            # Frozen layers stay in eval mode. A BatchNorm in training mode normalises with the
            # batch's own statistics and overwrites its running ImageNet statistics even when its
            # weights are frozen, so a "frozen" backbone would still drift, and would compute
            # different features in training than at test time. Frozen blocks also skip their
            # stochastic depth: a fixed feature extractor should be a fixed function.
            for module in self.features.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def new_head(num_classes: int) -> nn.Sequential:
    """A fresh classifier: dropout then Linear(1280 -> num_classes)."""
    return nn.Sequential(OrderedDict([
        ("dropout", nn.Dropout(DROPOUT)),
        ("fc", nn.Linear(NUM_FEATURES, num_classes)),
    ]))


_BLOCK_LAYER = {"_expand_conv": "expand.conv", "_bn0": "expand.bn",
                "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
                "_project_conv": "project.conv", "_bn2": "project.bn"}
_TOP_LAYER = {"_conv_stem": "features.stem.conv", "_bn0": "features.stem.bn",
              "_conv_head": "features.head.conv", "_bn1": "features.head.bn",
              "_fc": "classifier.fc"}


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Rename lukemelas-style keys (``_blocks.3._bn1.weight``) to this module's names.

    Keys already in this module's naming pass through unchanged; an unknown key raises
    ``KeyError``.
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m and m.group(2) in _BLOCK_LAYER:
            out[f"features.blocks.{m.group(1)}.{_BLOCK_LAYER[m.group(2)]}.{m.group(3)}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer in _TOP_LAYER:
            out[f"{_TOP_LAYER[layer]}.{param}"] = value
        elif key.startswith(("features.", "classifier.")):
            out[key] = value
        else:
            raise KeyError(key)
    return out
