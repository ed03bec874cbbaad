"""Selection by operation strength (OStr-DARTS Eq. 11) or OStr* (Eq. 18), averaged over the last
`window` architecture steps (search/strength.py); before any architecture step: magnitude. The hooks are
nasir/search/hooks.py `strength` and `strength_star`."""

from __future__ import annotations

from nasir.methods.base import Param, Selection, positive_int

WINDOW = Param("window", "strength_window", int, positive_int, "a whole number >= 1", None,
               "average the strength over the last B architecture steps (default: one epoch)")  # fmt: skip

STRENGTH = Selection("select", "strength", "operation strength (OStr-DARTS Eq. 11)", params=(WINDOW,), scores="strength")
STRENGTH_STAR = Selection("select", "strength_star", "OStr* (OStr-DARTS Eq. 18)", params=(WINDOW,), aliases=("strength-star",),
                          scores="strength_star")  # fmt: skip
