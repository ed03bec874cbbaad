"""DARTS (docs/methods.md, "DARTS"): alpha descends grad_alpha L_val, first order (xi = 0) or second
order (the unrolled step with the finite-difference Hessian-vector product; search/architect.py; the rule
is registered as "darts" by nasir/search/hooks.py)."""

from __future__ import annotations

from nasir.methods.base import Method, Param

ORDER = Param("order", "order", int, lambda v: v in (1, 2), "1 or 2 (first- or second-order DARTS)", 1,
              "first (1) or second (2) order architecture gradient")  # fmt: skip


METHOD = Method("method", "darts", "DARTS: bilevel architecture step, first or second order", params=(ORDER,), gradient="darts")
