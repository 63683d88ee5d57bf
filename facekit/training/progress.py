"""What the engine tells its caller while it trains: the CLI draws bars from it, tests stay quiet."""

from __future__ import annotations

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
