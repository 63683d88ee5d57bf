"""Pieces several test modules share (not a test module: pytest collects only test_*.py)."""

from __future__ import annotations

from facekit.engine import SilentProgress


class InterruptAt(SilentProgress):
    """Progress that presses Ctrl-C as ``epoch`` starts (of ``fold``, or of any fold): an interrupted run."""

    def __init__(self, epoch: int, fold: int | None = None):
        self.epoch, self.fold = epoch, fold

    def epoch_start(self, fold, epoch, epochs, batches):
        if epoch == self.epoch and self.fold in (None, fold):
            raise KeyboardInterrupt


# A throwaway augmentation plugin with no DALI version: a photo negative for the chosen images.
INVERT_PLUGIN = """
import numpy as np
from facekit.api import AugmentationSpec, hookimpl

def sample(rng, n, params):
    return (rng.random((n, 1)) < params).astype(np.float32)

def invert(images, samples, params):
    chosen = samples[:, 0].view(-1, 1, 1, 1) > 0.5
    return images.where(~chosen, 255 - images)

@hookimpl
def register_augmentations(register):
    register(AugmentationSpec("invert", lambda arg: float(arg or 0.5), sample, invert, "Photo negative."))
"""
