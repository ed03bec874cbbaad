"""Selection by operation strength (OStr-DARTS Eq. 11) or OStr* (Eq. 18), averaged over the last
`window` architecture steps (search/strength.py); before any architecture step: magnitude."""

from __future__ import annotations

from typing import Any

from nasir.methods import magnitude
from nasir.methods.base import Param, Selection, positive_int

WINDOW = Param("window", "strength_window", int, positive_int, "a whole number >= 1", None,
               "average the strength over the last B architecture steps (default: one epoch)")  # fmt: skip


def strength_scores(search: Any) -> dict[str, list[list[float]]]:
    strength = {k: v.double() for k, v in search.meter.strength().items()}
    if not strength:
        return magnitude.scores(search)
    return {k: v.tolist() for k, v in strength.items()}


def star_scores(search: Any) -> dict[str, list[list[float]]]:
    import torch

    from nasir.search.strength import ostr_star

    strength = {k: v.double() for k, v in search.meter.strength().items()}
    if not strength:
        return magnitude.scores(search)
    with torch.no_grad():
        return {k: ostr_star(v, search.model.alphas[k].detach().double()).tolist() for k, v in strength.items()}


STRENGTH = Selection("select", "strength", "operation strength (OStr-DARTS Eq. 11)", params=(WINDOW,), scores=strength_scores)
STRENGTH_STAR = Selection("select", "strength_star", "OStr* (OStr-DARTS Eq. 18)", params=(WINDOW,), aliases=("strength-star",),
                          scores=star_scores)  # fmt: skip
