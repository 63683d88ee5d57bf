"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The network (5,614,592 parameters, 29 convolutions) maps a 150x150 RGB face chip to a 128-d
descriptor (same person when the euclidean distance is below 0.6):

- stem: 7x7 stride-2 conv (32, no padding), affine, ReLU, 3x3 stride-2 max pool;
- body: 3 x res(32); down(64) + 3 x res(64); down(128) + 2 x res(128); down(256) + 2 x res(256);
  down(256). A residual block is conv3x3 + affine + ReLU, conv3x3 + affine, add, ReLU. A down
  block's first conv has stride 2 and no padding, its shortcut is a 2x2 stride-2 average pool,
  and the add zero-pads both branches to the larger channels / height / width (dlib add_prev_);
- head: global average pool, Linear(256 -> 128, no bias).

dlib's ``affine_`` layers are batch norm frozen into ``y = gamma * x + beta``: they are kept as
buffers here, so they stay fixed even when the rest of the network is fine-tuned.

Inputs are normalised the dlib way, ``(pixel - mean) / 256``; facekit's loader does that from
the architecture's declared :class:`~facekit.api.Normalization`, so the module takes normalised
tensors. The module works at any input size from 32 pixels up (global average pooling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DLIB_MEAN = (122.782, 117.001, 104.298)  # pixel units, from the .dat's input layer
DLIB_SCALE = 256.0
DESCRIPTOR_DIM = 128

# (in channels, out channels, down) for every residual block, input side first
PLAN: list[tuple[int, int, bool]] = (
    [(32, 32, False)] * 3
    + [(32, 64, True)] + [(64, 64, False)] * 3
    + [(64, 128, True)] + [(128, 128, False)] * 2
    + [(128, 256, True)] + [(256, 256, False)] * 2
    + [(256, 256, True)]
)


class FrozenAffine(nn.Module):
    """dlib ``affine_``: a batch norm frozen into ``y = weight * x + bias`` (buffers, never trained)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias[None, :, None, None], x, self.weight[None, :, None, None])


class ConvAffine(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        pad = k // 2 if stride == 1 else 0  # dlib: no padding for the strided convs
        self.conv = nn.Conv2d(cin, cout, k, stride, pad)
        self.affine = FrozenAffine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.stride[0] > 1:  # tiny inputs: a strided 3x3 needs at least 3x3
            k = self.conv.kernel_size[0]
            if x.shape[-1] < k or x.shape[-2] < k:
                x = F.pad(x, (0, max(0, k - x.shape[-1]), 0, max(0, k - x.shape[-2])))
        return self.affine(self.conv(x))


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev_``: the sum has the larger of each dimension; missing entries are zero."""
    if a.shape == b.shape:
        return a + b
    c = max(a.shape[1], b.shape[1])
    h = max(a.shape[2], b.shape[2])
    w = max(a.shape[3], b.shape[3])

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.c1 = ConvAffine(cin, cout, 3, 2 if down else 1)
        self.c2 = ConvAffine(cout, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(F.relu(self.c1(x)))
        if self.down:
            sc = F.avg_pool2d(x, 2, 2) if min(x.shape[-2:]) >= 2 else x
        else:
            sc = x
        return F.relu(add_padded(y, sc))


class DlibResNet(nn.Module):
    """The backbone: normalised (N, 3, H, W) -> (N, 128) face descriptor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvAffine(3, 32, 7, 2)
        self.blocks = nn.Sequential(*[Block(a, b, d) for a, b, d in PLAN])
        self.fc = nn.Linear(256, DESCRIPTOR_DIM, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        if min(x.shape[-2:]) >= 3:
            x = F.max_pool2d(x, 3, 2)
        x = self.blocks(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class Center(nn.Module):
    """Subtracts a running mean of the descriptors (updated in training mode, like batch norm).

    dlib descriptors share a large common component (on LFW the mean descriptor's norm is 1.29
    against 1.41 for a single one: any two faces have a cosine near 0.84), so a classifier on
    raw descriptors mostly sees that constant. Centering uses the training data only.
    """

    def __init__(self, dim: int, momentum: float = 0.05):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                batch_mean = x.detach().float().mean(0)
                if int(self.num_batches_tracked) == 0:
                    self.running_mean.copy_(batch_mean)
                else:
                    self.running_mean.lerp_(batch_mean, self.momentum)
                self.num_batches_tracked += 1
        return x - self.running_mean.to(x.dtype)


class CosineHead(nn.Module):
    """logits = scale * cos(x, w_c), the scale learned (init 16).

    The class weights start with a small norm (0.01): their direction is all that counts, and
    with Adam a small norm means a large angular step, so the head converges in a few epochs at
    facekit's default learning rate (1e-4) and weight decay (5e-3), which a plain linear head
    on these descriptors does not.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0, init_norm: float = 0.01):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * (init_norm / math.sqrt(in_features)))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
        return self.log_scale.exp() * cos


class Head(nn.Module):
    """The new classifier on the 128-d descriptor: centering, then a cosine or linear layer."""

    def __init__(self, num_classes: int, kind: str = "cosine"):
        super().__init__()
        self.center = Center(DESCRIPTOR_DIM)
        if kind == "cosine":
            self.classifier: nn.Module = CosineHead(DESCRIPTOR_DIM, num_classes)
        elif kind == "linear":
            self.classifier = nn.Linear(DESCRIPTOR_DIM, num_classes)
        else:
            raise ValueError(f"unknown head {kind!r} (cosine, linear)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.center(x))


class ScaledDelta(nn.Module):
    """Parametrization ``weight = pretrained + scale * delta`` with ``delta`` the trained tensor.

    For fine-tuning: with Adam a step moves ``delta`` by about the learning rate whatever the
    gradient's size, so the pretrained weights move ``scale`` times slower than the new head
    (a per-layer learning rate through facekit's single optimizer), and weight decay pulls the
    weights back toward the pretrained ones instead of toward zero.
    """

    def __init__(self, base: torch.Tensor, scale: float):
        super().__init__()
        self.scale = scale
        self.register_buffer("base", base.detach().clone())

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.base + self.scale * delta

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return (value - self.base) / self.scale


class DlibFaceClassifier(nn.Module):
    """dlib's ResNet backbone + a new head for C identities; ``forward`` returns logits.

    With ``finetune=False`` the backbone is frozen (``requires_grad=False``) and stays in eval
    mode whatever ``train()`` says; only the head is trained. With ``finetune=True`` every
    convolution and the descriptor layer train too, through :meth:`prepare_finetune`. The
    frozen-BN affine layers are buffers, so they are fixed in both cases.
    """

    def __init__(self, num_classes: int, head: str = "cosine", finetune: bool = False):
        super().__init__()
        self.backbone = DlibResNet()
        self.head = Head(num_classes, head)
        self.head_kind = head
        self.finetune = finetune
        self.backbone.requires_grad_(finetune)

    def prepare_finetune(self, scale: float = 0.1) -> "DlibFaceClassifier":
        """Train the backbone as ``pretrained + scale * delta`` (see :class:`ScaledDelta`).

        Call after the pretrained weights are loaded; a no-op for a frozen backbone.
        """
        from torch.nn.utils import parametrize

        if not self.finetune or scale == 1.0:
            return self
        for module in self.backbone.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                for name in ("weight", "bias"):
                    if getattr(module, name, None) is not None:
                        parametrize.register_parametrization(
                            module, name, ScaledDelta(getattr(module, name), scale))
        return self

    def train(self, mode: bool = True) -> "DlibFaceClassifier":
        super().train(mode)
        if not self.finetune:
            self.backbone.eval()
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d dlib face descriptor of normalised chips."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
