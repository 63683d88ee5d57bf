"""Pieces several test modules share (not a test module: pytest collects only test_*.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from facekit.config import TrainConfig
from facekit.engine import SilentProgress

# The quickest training a test can ask of `facekit train`: small images, one epoch, the torch
# loader in this process, no rotation, one CPU thread (the machine is shared).
FAST_SETTINGS = {
    "input_size": 48, "epochs": 1, "batch_size": 8, "loader": "torch", "workers": 0, "rotate": 0, "threads": 1,
}  # fmt: skip


def fast(**changes: Any) -> list[str]:
    """``facekit train`` arguments for a quick run: FAST_SETTINGS with ``changes`` (None leaves a setting out)."""
    args: list[str] = []
    for name, value in (FAST_SETTINGS | changes).items():
        if value is not None:
            args += ["--" + name.replace("_", "-"), str(value)]
    return args


FAST = fast()

# The quick run the engine's tests train in Python: the baseline at 64 px for two epochs.
QUICK_CONFIG = dict(
    arch="baseline", input_size=64, epochs=2, batch_size=8, lr=1e-3, rotate=0.0, loader="torch", workers=0,
    test_size=0.25, val_size=0.25, seed=3,
)  # fmt: skip


def config(data: Path, out: Path | None, **overrides: Any) -> TrainConfig:
    """A quick :class:`TrainConfig` (QUICK_CONFIG) of ``data`` into ``out``, with ``overrides``."""
    return TrainConfig(**({"data": data, "out": out} | QUICK_CONFIG | overrides))


def invoke(*args: Any, **kwargs: Any):
    """Run ``facekit ARGS`` in-process (arguments may be paths); a traceback in its output fails the test."""
    from facekit.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], **kwargs)
    assert "Traceback" not in result.output, result.output
    return result


def one_line_error(result, code: int) -> str:
    """The error line of a failed command: exactly one on stderr, starting with 'Error:', and exit ``code``."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


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
