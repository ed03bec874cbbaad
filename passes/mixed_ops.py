"""mixed_ops: every searchable edge becomes a mixed-op edge reading one row of architecture variables.

DARTS (darts-slides, "Overview"): o_bar(x) = sum_o softmax(alpha)_o o(x). The rows live on the
cell kind (`Cell.alpha_rows`), so every stacked copy of one kind shares them, as DARTS shares
alpha_normal and alpha_reduce. Fixed edges are left alone.
"""

from __future__ import annotations

import attrs

from nasir import ir
from nasir.pipeline import Pass, PassResult


class MixedOps(Pass):
    name = "mixed_ops"
    ensures = frozenset({"mixed_ops"})

    def run(self, spec: ir.Spec) -> PassResult:
        cells = []
        modified = False
        for c in spec.cells:
            rows: list[tuple[str, ...]] = []
            edges = []
            for e in c.edges:
                if e.choice is not None:
                    edges.append(attrs.evolve(e, alpha=len(rows)))
                    rows.append(e.choice.ops)
                else:
                    edges.append(e)
            if rows:
                modified = True
                c = attrs.evolve(c, edges=tuple(edges), alpha_rows=tuple(rows))
            cells.append(c)
        return PassResult(attrs.evolve(spec, cells=tuple(cells)), modified)
