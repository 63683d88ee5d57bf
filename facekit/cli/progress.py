"""How training shows itself: Rich bars on a terminal, plain lines in a log, nothing with --quiet."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from facekit.text import rich_safe


_running_bars: list[Progress] = []


def stop_bars() -> None:
    """Stop (and erase) any bar an interrupt or error left running, so the line printed next stands
    on its own instead of being written into the bar and the bar drawn again below it."""
    while _running_bars:
        _running_bars.pop().stop()


class ConsoleProgress:
    """A bar per epoch (loss and images/s) on a terminal, then a one-line epoch summary."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task = None
        self.loss_sum = 0.0
        self.images = 0
        self.rate_from = (0.0, 0)  # (seconds, images) at the end of the epoch's first batch
        self.epochs = 0
        self.kfold = False

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{rich_safe(text)}[/dim]", highlight=False)

    def epoch_start(self, fold: int, epoch: int, epochs: int, batches: int) -> None:
        self.loss_sum, self.images, self.epochs = 0.0, 0, epochs
        self.kfold = self.kfold or fold > 0
        if self.quiet or not self.console.is_terminal:
            return
        self.bar = Progress(
            TextColumn(f"fold {fold} epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[rate]} img/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task("train", total=batches, loss="-", rate="-")
        self.bar.start()
        _running_bars.append(self.bar)

    def batch_end(self, loss: float, images: int) -> None:
        if self.bar is None:
            return
        if not math.isnan(loss):
            self.loss_sum += loss * images
        self.images += images
        elapsed = self.bar.tasks[0].elapsed or 0.0
        if self.images == images:
            # The rate counts from the second batch: the first one carries the loader's start-up
            # and, with --compile, the compilation.
            self.rate_from = (elapsed, images)
        shown_loss = f"{self.loss_sum / self.images:.3f}" if self.loss_sum else "-"
        seconds, counted = elapsed - self.rate_from[0], self.images - self.rate_from[1]
        rate = f"{counted / seconds:.0f}" if counted and seconds > 0 else "-"
        self.bar.update(self.task, advance=1, loss=shown_loss, rate=rate)

    def epoch_end(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.stop()
            if self.bar in _running_bars:
                _running_bars.remove(self.bar)
            self.bar = None
        if self.quiet:
            return
        if row.get("compile_seconds"):
            self.message(f"compiling the training step took {row['compile_seconds']:.1f}s (not counted in img/s)")
        # Fits 80 columns: logs and CI consoles should not wrap it.
        best = " [green]*[/green]" if row.get("best") else ""
        fold = f"fold {row['fold']} " if row["fold"] or self.kfold else ""
        width = len(str(self.epochs))
        self.console.print(
            f"{fold}epoch {row['epoch']:>{width}}/{self.epochs}  train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}"
            f"  val loss {_figure(row['val_loss'])} acc {_figure(row['val_acc'])}  {row['images_per_s']:.0f} img/s{best}",
            highlight=False,
        )


def _figure(value: float) -> str:
    """Three decimals, or ``-`` when there was nothing to measure (no validation images)."""
    return "-" if math.isnan(value) else f"{value:.3f}"
