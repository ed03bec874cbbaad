"""metrics.jsonl, one JSON object per epoch, kept consistent with the checkpoint (docs/runtime.md).

The loop appends an epoch's line, then saves the checkpoint that records how many lines it covers
(`lines`). A kill between the two leaves one line the checkpoint does not know; `truncate(lines)` on
resume drops it, and the epoch that is run again appends it once more: a resumed run's file equals an
uninterrupted one's line for line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nasir.io import atomic_write


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled  # rank 0 writes; the other ranks only count
        self.lines = 0

    def append(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self.lines += 1

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """The whole file at once (atomic): for loops that keep every record in their checkpoint."""
        records = list(records)
        if self.enabled:
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in records))
        self.lines = len(records)

    def truncate(self, lines: int) -> None:
        """Keep the first `lines` lines (those the checkpoint resumed from has seen)."""
        self.lines = lines
        if not self.enabled or not self.path.exists():
            return
        kept = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
        atomic_write(self.path, "".join(kept))
