"""The study's three architectures, registered like any plugin's."""

from facekit import hookimpl
from facekit.api import IMAGENET, ArchitectureSpec, ArchOptions


def build_baseline(options: ArchOptions):
    from facekit.models import BaselineNet

    return BaselineNet(options.num_classes, options.input_size)


def build_tronnet(options: ArchOptions):
    from facekit.models import TronNet

    return TronNet(options.num_classes, options.input_size)


def build_resnet18(options: ArchOptions):
    from facekit.models import resnet18_transfer

    return resnet18_transfer(
        options.num_classes,
        pretrained=options.pretrained,
        finetune=options.finetune,
        weights=options.weights,
        trust=options.trust_weights,
    )


@hookimpl
def register_architectures(register):
    # The study's networks end in Linear(F, 300) -> ReLU -> Linear(300, C): the embedding is the 300-d hidden layer.
    register(ArchitectureSpec("baseline", build_baseline, "The study's 4-conv baseline (Nnet).", classifier="classifier.3"))
    register(ArchitectureSpec("tronnet", build_tronnet, "The study's 7-conv TronNet, Xavier init.", classifier="classifier.3"))
    register(
        ArchitectureSpec(
            "resnet18",
            build_resnet18,
            "torchvision ResNet18, ImageNet weights, new head; backbone frozen unless --finetune.",
            normalization=IMAGENET,
            pretrained=True,
            classifier="fc",  # its input: the 512-d pooled features
        )
    )
