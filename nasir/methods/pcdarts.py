"""PC-DARTS (docs/methods.md, "PC-DARTS"): 1/K of the channels through the mixed ops, edge normalisation
(search/pcdarts.py, in the supernet), DARTS' architecture step; architecture steps from epoch 16."""

from __future__ import annotations

from typing import Any

from nasir.methods import darts
from nasir.methods.base import Method, Param, positive_int

WARMUP = 15  # PC-DARTS' train_search.py: architecture steps from epoch 15 (0-based) on (docs/methods.md)
K = Param("k", "partial_channels", int, positive_int, "a whole number >= 1", 4, "1/K of the channels through the mixed ops")


def check(spec: Any) -> tuple[str, str | None] | None:
    if any(c.topology is not None for c in spec.cells):
        return ("method pcdarts: PC-DARTS' edge normalisation and topology variables both decide edges; use one of them",
                "drop the cell's 'topology' line or choose method darts or milenas")  # fmt: skip
    return None


METHOD = Method("method", "pcdarts", "PC-DARTS: partial channels and edge normalisation", params=(K, darts.ORDER),
                gradient="darts", warmup=WARMUP, check=check)  # fmt: skip
