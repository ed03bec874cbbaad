"""Selection by magnitude (DARTS): softmax(alpha), times the edge weights under PC-DARTS' edge
normalisation (search/pcdarts.py `normalized_scores`; the hook is nasir/search/hooks.py `magnitude`)."""

from __future__ import annotations

from nasir.methods.base import Selection

SELECTION = Selection("select", "magnitude", "softmax(alpha) (DARTS)", scores="magnitude")
