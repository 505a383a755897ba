"""The progress of one load as it is reported: a rich progress bar on stderr (`progress=True`)
and the `on_progress(bytes_done, bytes_total)` callback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Progress:
    """Plaintext bytes done out of the total a call announced (`begin`), told to the bar and
    the callback as they advance."""

    def __init__(
        self, label: str, *, bar: bool, on_progress: Callable[[int, int], None] | None
    ) -> None:
        self.label = label
        self.show_bar = bar
        self.on_progress = on_progress
        self.total = 0
        self.done = 0
        self._bar: Any = None
        self._task: Any = None

    def begin(self, total: int) -> None:
        self.total = total
        if self.show_bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)

    def advance(self, amount: int) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(self._task, advance=amount)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def stop(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()


__all__ = ["Progress"]
