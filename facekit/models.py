"""The study's networks (docs/method.md, "Architectures"), and the ResNet18 transfer model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from facekit.weights import load_torchvision_weights


def _flatten_width(features: nn.Module, input_size: int) -> int:
    """The flatten width for this input size, computed instead of hard-coded (the report's 1210 was wrong)."""
    with torch.no_grad():
        return int(features(torch.zeros(1, 3, input_size, input_size)).flatten(1).shape[1])


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class StudyNet(nn.Module):
    """Conv features, then Flatten -> Linear(F, 300) -> ReLU -> Linear(300, C): logits out.

    The study's report put a ReLU and a softmax after the last layer; facekit does not (the loss
    applies log-softmax). F is measured for the input size.
    """

    def __init__(self, features: nn.Sequential, num_classes: int, input_size: int):
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(_flatten_width(features, input_size), 300), nn.ReLU(inplace=True),
            nn.Linear(300, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BaselineNet(StudyNet):
    """The study's 4-conv "Nnet" (report Table 1)."""

    def __init__(self, num_classes: int, input_size: int = 224):
        features = nn.Sequential(
            nn.Conv2d(3, 21, 3, 2), nn.ReLU(inplace=True),
            *_conv_bn_relu(21, 20, 3, 2),
            *_conv_bn_relu(20, 15, 3, 2, 1),
            *_conv_bn_relu(15, 7, 5, 2, 1),
        )  # fmt: skip
        super().__init__(features, num_classes, input_size)


class TronNet(StudyNet):
    """The study's 7-conv "TronNet" (report Table 2) with Xavier (Glorot) initialisation."""

    def __init__(self, num_classes: int, input_size: int = 224):
        features = nn.Sequential(
            nn.Conv2d(3, 21, 3, 1), nn.ReLU(inplace=True),
            *_conv_bn_relu(21, 30, 3, 1, 1), nn.MaxPool2d(3),
            *_conv_bn_relu(30, 35, 3, 1, 1),
            *_conv_bn_relu(35, 25, 3, 1, 1), nn.MaxPool2d(3),
            *_conv_bn_relu(25, 20, 3, 1, 1),
            *_conv_bn_relu(20, 15, 3, 1, 1),
            *_conv_bn_relu(15, 10, 5, 1, 1),
        )  # fmt: skip
        super().__init__(features, num_classes, input_size)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)


def freeze_all_but(model: nn.Module, trainable: nn.Module) -> nn.Module:
    """Freeze every parameter of ``model`` except those of ``trainable`` (the new head)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable.parameters():
        parameter.requires_grad_(True)
    return model


def resnet18_transfer(num_classes: int, *, pretrained: bool, finetune: bool, weights: Path | None, trust: bool) -> nn.Module:
    """torchvision's ResNet18 with ImageNet weights and a new ``Linear(512, C)`` head."""
    from torchvision.models import ResNet18_Weights, resnet18

    model = resnet18(weights=None)
    if pretrained:
        load_torchvision_weights(ResNet18_Weights.IMAGENET1K_V1, weights, trust=trust, model=model)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if not finetune:
        freeze_all_but(model, model.fc)
    return model
