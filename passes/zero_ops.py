"""zero_ops: the `none` op leaves the computation but keeps its architecture variable.

A zero op contributes 0 * softmax(alpha)_none to the sum, so skipping it changes neither the forward
value nor any gradient; its alpha still takes part in the softmax (so the other weights, the loss
and selection are unchanged). What it saves is the memory and time of materialising zero tensors.
"""

from __future__ import annotations

import attrs

from nasir import ir, ops
from nasir.pipeline import Pass, PassResult


def _is_zero(op: str) -> bool:
    """The registry's zero op; a recurrent cell's ops (docs/recurrent.md) are not in the registry, and its zero is `none`."""
    d = ops.REGISTRY.get(op)
    return d.is_zero if d is not None else op == "none"


class ZeroOps(Pass):
    name = "zero_ops"
    requires = frozenset({"mixed_ops"})
    ensures = frozenset({"zero_ops"})

    def run(self, spec: ir.Spec) -> PassResult:
        cells = []
        for c in spec.cells:
            edges = tuple(attrs.evolve(e, computed=tuple(o for o in e.candidates if not _is_zero(o)))
                          if e.alpha is not None else e for e in c.edges)  # fmt: skip
            cells.append(c if edges == c.edges else attrs.evolve(c, edges=edges))
        # Modified when the IR changed: setting `computed` on an edge without `none` changes the IR
        # too (it was None), and a second run changes nothing (`computed` already set).
        cells_t = tuple(cells)
        return PassResult(attrs.evolve(spec, cells=cells_t), cells_t != spec.cells)
