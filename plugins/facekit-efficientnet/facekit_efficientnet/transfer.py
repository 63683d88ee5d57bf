"""Turning the ImageNet classifier into a face-identity classifier for facekit."""

from __future__ import annotations

from facekit.api import ArchOptions
from facekit_efficientnet.model import EfficientNetLite0, new_head
from facekit_efficientnet.weights import load_imagenet_model


def replace_head(model: EfficientNetLite0, num_classes: int, finetune: bool) -> EfficientNetLite0:
    """Swap the 1000-class ImageNet head for a new one and set which parameters train.

    ``finetune`` False freezes the whole backbone (``requires_grad`` False, kept in eval mode by
    :meth:`EfficientNetLite0.train`); only the new head trains. True trains every layer.
    """
    model.classifier = new_head(num_classes)
    for p in model.features.parameters():
        p.requires_grad_(finetune)
    return model.train()


def build_transfer_model(options: ArchOptions) -> EfficientNetLite0:
    if options.num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {options.num_classes}")
    if options.pretrained:
        model = load_imagenet_model(options.weights, trust=options.trust_weights)
    else:  # random initialisation: no weights package needed (facekit's generic tests)
        model = EfficientNetLite0(num_classes=1000)
    return replace_head(model, options.num_classes, options.finetune)
