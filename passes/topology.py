"""topology: stretchable-cell topology variables (beta) for cells that declare `topology ...`.

Stretchable cells (stretchable-cells, "Decoupling topology and operations") model which edges exist
with variables beta apart from which op an edge carries (alpha). This pass writes the rows of those
variables into `Cell.beta_rows`: one `BetaRow` per deciding node, one code per topology that node can
pick, one beta per code (softmax over the codes of a row; nasir/search/topology.py turns them into
one merged factor per edge, Eq. 6 / 10 / 13).

- `topology inputs k` (Eq. 3-6): the deciding node is each intermediate node j; its codes are the
  k-subsets of its predecessors. The cell inputs decide nothing (the paper: tau_1 = tau_2 = empty).
- `topology outputs k` (Eq. 7-10): the deciding node is each state i with successors -- the cell
  inputs included (the paper's beta~ = {beta~_i}, i = 1..N, and its example "node x_2 has 4 posterior
  nodes" is an input); its codes are the k-subsets of its successors. The last node has no successor
  and no row. A node with fewer than k successors (the second-to-last node under `outputs 2`) has
  no row either: the paper sizes the row |beta~_i| = |tau~_i| = C(N-i, 2), which is C(1, 2) = 0 for
  it, so no output edge of it exists (merged factor 0; it still enters the cell's concatenation).
  That is the reading under which the DARTS-sized cell "keeps the same edge number 8 as DARTS"
  (stretchable-cells, "Search without stretchable cells"): 4 deciding states x 2 edges; the earlier
  reading (one forced code for that node) gave 9. docs/methods.md, "Stretchable cells".
- `topology outputs any` (Eq. 11-13): as `outputs k`, but the codes are all 2^n subsets of the n
  successors, the empty code included ("including none for removing the node"), listed by size
  then in cell order. The derivation removes an intermediate node whose most likely code is the
  empty one, concatenation slot included (nasir/search/topology.py `removed_nodes`).

Successors of i are the intermediate nodes j that a searchable edge i -> j reaches, in cell order;
predecessors of j likewise. The paper's "posterior nodes x_{i+1}..x_N" counts x_2 as a posterior of
x_1, but no edge can enter a cell input, so we count only the edges the cell declares: n_i =
|successors(i)| is N-i for x_2 and the intermediate nodes and N-2 for x_1. Fixed (non-choice) edges
are not topology decisions: they always exist, as `Derive` always keeps them.

Stretchable cells drop the zero op: "since the topology and operations are already decoupled, there
is no need to involve a zero operation" (after Eq. 5). The pass removes `none` from the choices of
these cells, from their alpha rows and (if zero_ops ran) from `computed`, keeping row r of
`alpha_rows` equal to the candidates of the edge with `alpha == r`.
"""

from __future__ import annotations

import attrs

from nasir import ir, ops
from nasir.analysis import beta_rows, predecessors, successors  # noqa: F401 - the IR's topology rows (ir layer)
from nasir.diagnostics import error_at
from nasir.pipeline import Pass, PassResult


def _drop_zero(e: ir.Edge) -> ir.Edge:
    if e.choice is None:
        return e
    kept = tuple(o for o in e.choice.ops if not ops.REGISTRY[o].is_zero)
    if kept == e.choice.ops:
        return e
    if not kept:
        raise error_at(e.choice.span or e.span, f"edge {e.src} -> {e.dst} of a stretchable cell has no candidate but 'none'",
                       "topology variables decide which edges exist; give the edge a real op")  # fmt: skip
    dropped = " - ".join(o for o in e.choice.ops if o not in kept)
    # `set_expr "-" set_term` is left-associative, so appending a difference re-parses to `kept`.
    choice = attrs.evolve(e.choice, ops=kept, expr=f"{e.choice.expr} - {dropped}")
    computed = tuple(o for o in e.computed if o in kept) if e.computed is not None else None
    return attrs.evolve(e, choice=choice, computed=computed)


def _cell(c: ir.Cell) -> ir.Cell:
    if c.topology is None:
        return c
    edges = tuple(_drop_zero(e) for e in c.edges)
    alpha_rows = c.alpha_rows
    if alpha_rows is not None:
        by_row = {e.alpha: e.candidates for e in edges if e.alpha is not None}
        alpha_rows = tuple(by_row[r] for r in range(len(alpha_rows)))
    c = attrs.evolve(c, edges=edges, alpha_rows=alpha_rows)
    return attrs.evolve(c, beta_rows=beta_rows(c))


class Topology(Pass):
    name = "topology"
    requires = frozenset({"mixed_ops"})
    ensures = frozenset({"topology"})

    def run(self, spec: ir.Spec) -> PassResult:
        cells = tuple(_cell(c) for c in spec.cells)
        return PassResult(attrs.evolve(spec, cells=cells), cells != spec.cells)
