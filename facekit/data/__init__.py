"""Data sets: the folder index and its checks, splits' inputs, normalization statistics, loaders.

Kept import-light: torch and DALI load only with ``facekit.data.loaders`` or ``facekit.data.stats``.
"""

from facekit.data.index import IMAGE_EXTENSIONS, BadFile, DatasetIndex, index_dataset

__all__ = ["IMAGE_EXTENSIONS", "BadFile", "DatasetIndex", "index_dataset"]
