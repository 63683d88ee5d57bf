"""What the engine tells its caller while it trains (the CLI draws bars from it, tests stay quiet), and how it says it was interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Progress(Protocol):
    """What the engine tells its caller; the CLI draws bars, tests and --json stay quiet."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, fold: int, epoch: int, epochs: int, batches: int) -> None: ...
    def batch_end(self, loss: float, images: int) -> None: ...
    def epoch_end(self, row: dict[str, Any]) -> None: ...


class SilentProgress:
    def message(self, text: str) -> None:
        pass

    def epoch_start(self, fold: int, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch_end(self, loss: float, images: int) -> None:
        pass

    def epoch_end(self, row: dict[str, Any]) -> None:
        pass


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``run_dir`` is the folder to continue with ``facekit train --resume``."""

    def __init__(self, run_dir: Path | None):
        super().__init__(f"training of {run_dir} interrupted")
        self.run_dir = run_dir
