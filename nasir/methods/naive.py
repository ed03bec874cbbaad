"""The naive selection (OStr-DARTS Fig. 4b): the loss increase when an op is removed from its edge, on
a fixed batch (search/strength.py `removal_importance`)."""

from __future__ import annotations

from typing import Any

from nasir.methods.base import Selection


def scores(search: Any) -> dict[str, list[list[float]]]:
    return {k: v.tolist() for k, v in search.removal_scores().items()}


SELECTION = Selection("select", "naive", "loss increase on removal (OStr-DARTS Fig. 4b)", scores=scores)
