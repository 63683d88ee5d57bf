"""facekit: train and judge face-identity classifiers, per class."""

from facekit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
