"""The naive selection (OStr-DARTS Fig. 4b): the loss increase when an op is removed from its edge, on
a fixed batch (search/strength.py `removal_importance`; the hook is nasir/search/hooks.py `naive`)."""

from __future__ import annotations

from nasir.methods.base import Selection

SELECTION = Selection("select", "naive", "loss increase on removal (OStr-DARTS Fig. 4b)", scores="naive")
