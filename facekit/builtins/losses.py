"""Plain and class-weighted cross-entropy, both with optional label smoothing; ArcFace and CosFace with their cosine head."""

from typing import Sequence

from facekit import hookimpl
from facekit.api import LossOption, LossSpec


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


def build_margin(kind: str):
    def build(class_counts: Sequence[int], *, s: float, m: float, weighted: bool, center: bool):
        from facekit.margins import MarginLoss

        return MarginLoss(kind, s, m, inverse_frequency_weights(class_counts) if weighted else None)

    return build


def build_cosine_head(embedding_dim: int, num_classes: int, options: dict):
    from facekit.margins import CosineHead

    return CosineHead(embedding_dim, num_classes, options["s"], center=options["center"])


def margin_options(margin: float, margin_kind: str) -> dict:
    return {
        "s": LossOption(64.0, "scale: logits = s * cos", lambda v: 0 < v <= 1024, "a number above 0 and at most 1024"),
        "m": LossOption(margin, f"margin on the true class's {margin_kind}", lambda v: 0 <= v < 1.5, "a number from 0 up to 1.5"),
        "weighted": LossOption(False, "weight classes by 1/n_c, as --loss weighted", None, "true or false"),
        "center": LossOption(True, "subtract a running mean of the embeddings before normalizing them", None, "true or false"),
    }


@hookimpl
def register_losses(register):
    register(LossSpec("plain", build_plain, "Cross-entropy.", supports_label_smoothing=True))
    register(
        LossSpec(
            "weighted", build_weighted, "Cross-entropy weighted by 1/n_c (weights average 1).", supports_label_smoothing=True
        )
    )
    register(
        LossSpec(
            "arcface", build_margin("arcface"),
            "ArcFace: cosine head, additive angular margin on the true class (options s=64, m=0.5, weighted=false, center=true).",
            options=margin_options(0.5, "angle (radians)"), head=build_cosine_head,
        )
    )
    register(
        LossSpec(
            "cosface", build_margin("cosface"),
            "CosFace: cosine head, additive cosine margin on the true class (options s=64, m=0.35, weighted=false, center=true).",
            options=margin_options(0.35, "cosine"), head=build_cosine_head,
        )
    )  # fmt: skip
