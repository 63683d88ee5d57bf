"""Margin losses (ArcFace, CosFace) and the cosine head they train.

The head replaces an architecture's final classifier: ``logits = s * cos(embedding, w_c)``,
embeddings and class weights L2-normalized, so at inference the logits (and predict's softmax)
are the scaled cosines and ``logits / s`` is each class's cosine. The loss receives those
logits and, for the true class only, subtracts a margin before the softmax cross-entropy:

- ArcFace (additive angular margin): ``cos(theta_y) -> cos(theta_y + m)``;
- CosFace (additive cosine margin): ``cos(theta_y) -> cos(theta_y) - m``.

Both are computed in float32 whatever autocast says. ArcFace uses
``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` with ``sin(theta) = sqrt(1 - cos^2)``
kept away from 0 (its gradient is infinite there), and, as insightface's CombinedMarginLoss,
where ``theta + m`` would pass pi (``cos(theta) <= cos(pi - m)``) it uses
``cos(theta) - m sin(pi - m)`` instead, so the target logit keeps decreasing with the angle.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

# sin(theta)^2 is kept at least this: sqrt's gradient at 0 is infinite (cos = +-1 exactly, which
# bf16 rounding makes common).
MIN_SIN_SQUARED = 1e-6
INIT_NORM = 0.01  # of each class's weight vector at initialisation


class CosineHead(nn.Module):
    """``logits = logit_scale * cos(embedding, w_c)`` over L2-normalized embeddings and class weights (float32)."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float, center: bool = True, momentum: float = 0.05):
        super().__init__()
        # center: subtract a running mean of the embeddings (updated in training mode, like batch
        # norm's) before normalizing. Embeddings that share a large common component otherwise
        # leave every class a sliver of the sphere: dlib's descriptors (any two faces have a cosine
        # near 0.84), and any embedding after a ReLU (non-negative: one orthant of the sphere).
        # Measured on lfw_min8 with dlib's frozen descriptors: rank-1 0.969 without, 0.996 with.
        self.center, self.momentum = bool(center), float(momentum)
        if self.center:
            self.register_buffer("running_mean", torch.zeros(embedding_dim))
            self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        # Only the weights' directions count. A small norm (0.01 per class) makes Adam's steps, about
        # the learning rate per component whatever the gradient, large turns: the head converges in
        # an epoch or two at facekit's default --lr 1e-4, as the dlib plugin's cosine head does.
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * (INIT_NORM / math.sqrt(embedding_dim)))
        self.logit_scale = float(scale)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Each embedding's cosine to each class's weight, (N, C), in float32."""
        with torch.autocast(embeddings.device.type, enabled=False):
            embeddings = embeddings.float()
            if self.center:
                if self.training:
                    with torch.no_grad():
                        batch_mean = embeddings.detach().mean(0)
                        if int(self.num_batches_tracked) == 0:
                            self.running_mean.copy_(batch_mean)
                        else:
                            self.running_mean.lerp_(batch_mean, self.momentum)
                        self.num_batches_tracked += 1
                embeddings = embeddings - self.running_mean
            return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.cosines(embeddings)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, logit_scale={self.logit_scale}, center={self.center}"


def arcface_target(cos: torch.Tensor, margin: float) -> torch.Tensor:
    """``cos(theta + margin)`` for cosines ``cos``, with insightface's guard past pi - margin."""
    sin = torch.sqrt((1.0 - cos * cos).clamp(min=MIN_SIN_SQUARED))
    shifted = cos * math.cos(margin) - sin * math.sin(margin)
    return torch.where(cos > math.cos(math.pi - margin), shifted, cos - math.sin(math.pi - margin) * margin)


class MarginLoss(nn.Module):
    """Cross-entropy over ``s * cos`` with a margin on the true class's cosine (``kind`` arcface or cosface).

    Called as ``loss(logits, targets)`` with the logits of a :class:`CosineHead` of the same
    scale ``s``. ``weight`` is cross-entropy's per-class weight (None: every class alike).
    """

    def __init__(self, kind: str, scale: float, margin: float, weight: torch.Tensor | None = None):
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"unknown margin kind {kind!r}")
        self.kind, self.scale, self.margin = kind, float(scale), float(margin)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            cos = (logits.float() / self.scale).clamp(-1.0, 1.0)
            target = cos.gather(1, targets[:, None])
            shifted = arcface_target(target, self.margin) if self.kind == "arcface" else target - self.margin
            margined = cos.scatter(1, targets[:, None], shifted)
            return F.cross_entropy(self.scale * margined, targets, weight=self.weight)

    def extra_repr(self) -> str:
        return f"{self.kind}, s={self.scale}, m={self.margin}, weighted={self.weight is not None}"
