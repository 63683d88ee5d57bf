"""facekit-dlib: dlib's face-recognition ResNet as a facekit architecture, and ``facekit align``."""

__version__ = "0.1.0"
