"""MiLeNAS' mixed-level rule (stretchable-cells Eq. 18, search/milenas.py): the architecture descends
grad (L_train + lambda' * L_val) at the current w, first order; with topology variables a third data
split gives the betas' L_val."""

from __future__ import annotations

from nasir.methods.base import Method, Param

LAM = Param("lam", "mixed_level", float, lambda v: v >= 0, "a number >= 0 (lambda' of Eq. 18)", 1.0, "lambda' of Eq. 18")


METHOD = Method("method", "milenas", "MiLeNAS: mixed-level architecture step (first order)", params=(LAM,),
                gradient="milenas", three_way=True)  # fmt: skip
