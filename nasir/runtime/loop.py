"""What every loop does at a step boundary (docs/runtime.md): the progress bar, the stop signal, the
caller's `stop_after_steps`, the callback. Search and training drive it; it knows neither."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from nasir import device as dv


class Control:
    """One run's progress and stopping. `done` counts the steps this process ran (resumed ones excluded
    when `count_from_start` is False, as training counts them; the search counts from the run's start)."""

    def __init__(self, *, total: int, initial: int, progress: bool, main: bool, desc: str | None = None,
                 stop_after_steps: int | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
                 leave: bool = True):  # fmt: skip
        self.stop = dv.StopFlag()
        self.stop_after_steps = stop_after_steps
        self.callback = callback
        self.bar = None
        if progress and main:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True, leave=leave)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def should_stop(self, done: int) -> bool:
        """A stop signal every rank agreed on, or `done` reached `stop_after_steps`."""
        return self.stop.agreed() or (self.stop_after_steps is not None and done >= self.stop_after_steps)

    def notify(self, info: dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
