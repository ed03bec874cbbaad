"""derive: a searched space plus scores per candidate op -> a derived cell pair, under the spec's constraints.

Selection (DARTS, darts-slides "Deriving architectures"; docs/methods.md): per mixed edge the candidate
with the largest score; per node the `keep k` edges whose chosen op scores highest (all edges when
the cell has no `keep`). `none` takes part in the argmax only where the cell has no `keep`: DARTS
(`keep 2 inputs per node`) ranks the edges by their best op other than `none`, while the standard
NAS-Bench-201 derivation (SDARTS' and OStr-DARTS' NB201 tables) takes the argmax over all ops, so an
NB201 edge may derive to `none` (docs/methods.md, "Derivation"). `drop_none=True` / `False` forces one
rule for every cell (True is nasir's earlier behaviour). `remove_nodes` (stretchable cells' empty
code) drops nodes, their edges and their output slots before dead-node elimination. The score is whatever the selection rule supplies:
softmax(alpha) for magnitude, operation strength for OStr-DARTS (Eq. 8-11), OStr* (Eq. 18).
Kept edges are listed in descending score per node, as DARTS' genotype parser lists them, so the
exported genotype string equals the reference's.
Constraints: `limit OP <= n per cell` keeps the n best-scoring uses of OP and moves the others to
their next best candidate (P-DARTS' rule for skip connections); `budget params|macs <= X` moves the
lowest-scoring parametric ops to their best parameter-free candidate until the network fits.
Then dead-node elimination (passes/dead_nodes.py), unless `dead_nodes=False` (the recurrent genotype
keeps every node, as the DARTS authors' `genotype()`; nasir/rnn/cell.py).
Recurrent cells (docs/recurrent.md) derive here too: their ops are in `nasir.ops.RECURRENT`, `none`
the zero op, and `keep 1 inputs per node` is DARTS' k = 1 (the strongest non-`none` edge of each node,
with its strongest op; ties to the earlier edge and the earlier op).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from nasir import ir, ops
from nasir.diagnostics import error_at
from nasir.passes.dead_nodes import eliminate
from nasir.pipeline import Pass, PassManager, PassResult, assemble

Scores = Mapping[str, Sequence[Sequence[float]]]  # cell kind -> alpha row -> score per candidate
CostFn = Callable[[ir.Spec], Mapping[str, float]]  # derived spec -> {"params": ..., "macs": ...}


@attrs.frozen
class Pick:
    """The chosen op of one mixed edge and the ranking of its candidates (best first, `none` out)."""

    edge: ir.Edge
    ranking: tuple[tuple[str, float], ...]
    op: str
    score: float


def _ranking(e: ir.Edge, row: Sequence[float], drop_none: bool = True) -> tuple[tuple[str, float], ...]:
    pairs = [(op, float(s)) for op, s in zip(e.candidates, row) if not (drop_none and ops.op_def(op).is_zero)]
    # Stable on ties: the earlier candidate wins, as argmax does.
    return tuple(sorted(pairs, key=lambda p: -p[1]))


def select(c: ir.Cell, scores: Sequence[Sequence[float]], keep_edges: set[tuple[str, str]] | None = None,
           drop_none: bool | None = None) -> list[Pick | ir.Edge]:  # fmt: skip
    """Per node: fixed edges, then the kept mixed edges in descending score. `drop_none=None`: drop
    `none` from the argmax when the cell has `keep k` (DARTS), keep it otherwise (NAS-Bench-201)."""
    if drop_none is None:
        drop_none = c.keep is not None
    out: list[Pick | ir.Edge] = []
    for n in c.node_names:
        picks = []
        for e in c.in_edges(n):
            if e.alpha is None:
                out.append(e)
                continue
            rank = _ranking(e, scores[e.alpha], drop_none)
            if not rank:
                raise error_at(e.span, f"edge {e.src} -> {e.dst} has no candidate but 'none'")
            picks.append(Pick(e, rank, rank[0][0], rank[0][1]))
        order = sorted(range(len(picks)), key=lambda i: -picks[i].score)
        if keep_edges is not None:
            kept = [picks[i] for i in order if (picks[i].edge.src, picks[i].edge.dst) in keep_edges]
        elif c.keep is not None:
            kept = [picks[i] for i in order[: c.keep]]
        else:
            kept = picks  # no `keep`: every edge stays (NAS-Bench-201), in IR order
        out.extend(kept)
    return out


def apply_limits(picks: list[Pick], limits: Sequence[ir.Limit]) -> list[Pick]:
    picks = list(picks)
    saturated: set[str] = set()
    for lim in limits:
        users = sorted((i for i, p in enumerate(picks) if p.op == lim.op), key=lambda i: -picks[i].score)
        saturated.add(lim.op)
        for i in users[lim.max :]:
            p = picks[i]
            alt = next(((op, s) for op, s in p.ranking if op not in saturated), None)
            if alt is None:
                raise error_at(lim.span, f"limit cannot be met: edge {p.edge.src} -> {p.edge.dst} has no other candidate")
            picks[i] = attrs.evolve(p, op=alt[0], score=alt[1])
    return picks


def _fixed(c: ir.Cell, chosen: list[Pick | ir.Edge], removed: set[str] = frozenset()) -> ir.Cell:  # type: ignore[assignment]
    edges = tuple(
        x if isinstance(x, ir.Edge) else ir.Edge(x.edge.src, x.edge.dst, op=x.op, span=x.edge.span) for x in chosen
    )
    edges = tuple(e for e in edges if e.src not in removed and e.dst not in removed)
    nodes = tuple(n for n in c.nodes if n.name not in removed)
    output = c.output
    if removed and output is not None:
        output = attrs.evolve(output, nodes=tuple(n for n in output.nodes if n not in removed))
    return attrs.evolve(c, nodes=nodes, edges=edges, output=output, alpha_rows=None, beta_rows=None, keep=None,
                        keep_span=None, topology=None)  # fmt: skip


class Derive(Pass):
    name = "derive"
    requires = frozenset({"mixed_ops"})
    takes_arguments = True

    def __init__(self, scores: Scores, *, keep_edges: Mapping[str, set[tuple[str, str]]] | None = None,
                 remove_nodes: Mapping[str, set[str]] | None = None, drop_none: bool | None = None,
                 cost: CostFn | None = None, dead_nodes: bool = True):  # fmt: skip
        self.scores = scores
        self.dead_nodes = dead_nodes
        self.keep_edges = keep_edges or {}
        self.remove_nodes = remove_nodes or {}
        self.drop_none = drop_none
        self.cost = cost

    def run(self, spec: ir.Spec) -> PassResult:
        limits = spec.search.limits if spec.search else ()
        budgets = spec.search.budgets if spec.search else ()
        chosen: dict[str, list[Pick | ir.Edge]] = {}
        for c in spec.cells:
            if c.alpha_rows is None:
                continue
            if c.name not in self.scores:
                raise error_at(c.span, f"no scores for cell '{c.name}'")
            sel = select(c, self.scores[c.name], self.keep_edges.get(c.name), self.drop_none)
            picks = apply_limits([x for x in sel if isinstance(x, Pick)], limits)
            it = iter(picks)
            chosen[c.name] = [x if isinstance(x, ir.Edge) else next(it) for x in sel]

        def build() -> ir.Spec:
            finish = eliminate if self.dead_nodes else (lambda c: c)
            cells = tuple(finish(_fixed(c, chosen[c.name], set(self.remove_nodes.get(c.name, ())))) if c.name in chosen else c
                          for c in spec.cells)  # fmt: skip
            return attrs.evolve(spec, cells=cells, search=None, properties=frozenset())

        derived = build()
        cap = {lim.op: lim.max for lim in limits}  # limits are per cell; the tightest of repeated ones holds
        for lim in limits:
            cap[lim.op] = min(cap[lim.op], lim.max)

        def allowed(name: str, p: Pick) -> tuple[str, float] | None:
            """The best parameter-free candidate of `p` that no `limit` forbids in cell `name`."""
            used = {op: sum(isinstance(x, Pick) and x.op == op for x in chosen[name]) for op in cap}
            return next(((o, s) for o, s in p.ranking if ops.op_def(o).parameter_free and used.get(o, -1) < cap.get(o, 1 << 30)), None)

        for b in budgets:
            if self.cost is None:
                continue
            while (value := self.cost(derived)[b.kind]) > b.value.value:
                # The cheapest move in score: the lowest-scoring parametric op goes parameter-free, to
                # a candidate the limits still allow (issue 14, item 4: a budget must not break a limit).
                cands = [
                    (p.score, name, i) for name, sel in chosen.items() for i, p in enumerate(sel)
                    if isinstance(p, Pick) and not ops.op_def(p.op).parameter_free and allowed(name, p) is not None
                ]  # fmt: skip
                if not cands:
                    under = f" under {', '.join(f'limit {o} <= {n}' for o, n in cap.items())}" if cap else ""
                    raise error_at(b.span, f"budget cannot be met{under}: the network needs {value:,.0f} {b.kind} "
                                           "with every op it can spare made parameter-free")  # fmt: skip
                _, name, i = min(cands)
                p = chosen[name][i]
                op, s = allowed(name, p)  # type: ignore[misc]
                chosen[name][i] = attrs.evolve(p, op=op, score=s)
                derived = build()
        for name, sel in chosen.items():  # every constraint holds, or derivation said which could not be met
            for op, n in cap.items():
                assert sum(isinstance(x, Pick) and x.op == op for x in sel) <= n, (name, op)
        return PassResult(derived, True)


def derive(spec: ir.Spec, scores: Scores, *, keep_edges: Mapping[str, set[tuple[str, str]]] | None = None,
           remove_nodes: Mapping[str, set[str]] | None = None, drop_none: bool | None = None,
           cost: CostFn | None = None, dead_nodes: bool = True, verify: bool | None = None) -> ir.Spec:  # fmt: skip
    """The derived spec of a searched IR (mixed_ops ran) through the "derive" pipeline of the pass
    manager (nasir/pipeline.py): its `requires` are checked, the IR is verified after the pass under
    pytest, `--dump-after derive` could print it. Same arguments and result as `Derive(...).run(spec).spec`."""
    d = Derive(scores, keep_edges=keep_edges, remove_nodes=remove_nodes, drop_none=drop_none, cost=cost, dead_nodes=dead_nodes)
    return PassManager(assemble("derive", [d]), verify=verify).apply(spec)
