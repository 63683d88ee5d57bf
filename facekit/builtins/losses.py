"""Plain and class-weighted cross-entropy, both with optional label smoothing."""

from typing import Sequence

from facekit import hookimpl
from facekit.api import LossSpec


def inverse_frequency_weights(class_counts: Sequence[int]):
    """weight_c proportional to 1 / n_c, scaled so the weights of classes with training images average 1.

    A class with no training image gets weight 0: it cannot contribute a loss term anyway.
    """
    import torch

    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = 1.0 / counts[present]
    weights[present] /= weights[present].mean()
    return weights.float()


def build_plain(class_counts: Sequence[int], label_smoothing: float = 0.0):
    from torch import nn

    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def build_weighted(class_counts: Sequence[int], label_smoothing: float = 0.0):
    from torch import nn

    # torch spreads the smoothed mass over classes in proportion to their weights too.
    return nn.CrossEntropyLoss(weight=inverse_frequency_weights(class_counts), label_smoothing=label_smoothing)


@hookimpl
def register_losses(register):
    register(LossSpec("plain", build_plain, "Cross-entropy.", supports_label_smoothing=True))
    register(
        LossSpec(
            "weighted", build_weighted, "Cross-entropy weighted by 1/n_c (weights average 1).", supports_label_smoothing=True
        )
    )
