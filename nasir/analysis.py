"""What `nasir info` reports: size and cost of a derived network, shape of its cells, size of a search space.

This module counts over the IR only (no torch, no module is built) and renders the report;
nasir/measure.py builds the network or supernet for the counts that need a module and assembles the
report (`nasir.measure.info`).

- Parameters and MACs are counted on the built module (nasir/measure.py, with targets/blocks.py
  `count_params`, `count_macs`, by the rules of docs/ops.md, "Counting rules").
- Depth and width of a derived cell follow SDARTS (Chen & Hsieh, 2020), appendix 7.4: the depth is
  the number of connections on the longest path from the input nodes to the output node; the width
  adds the widths (c each) of the intermediate nodes directly connected to the inputs, where a node
  that also reads intermediate nodes counts only the share of its inputs that are cell inputs.
  Section 5 gives DARTS (V2) depth 3 and width 3.5c, PC-DARTS depth 2 and width 4c.
- A search space: mixed edges, architecture variables (alpha: one per candidate op of a mixed edge;
  beta: one per topology code of passes/topology.py), the supernet's weight parameters, and the
  number of candidate architectures its derivation rule allows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from itertools import combinations, product
from typing import Any

from nasir import ir, ops

# ---- cell shape (SDARTS appendix 7.4) ---------------------------------------------------------------


def _live_edges(cell: ir.Cell) -> list[ir.Edge]:
    """The connections of a derived cell: an edge carrying `none` connects nothing."""
    return [e for e in cell.edges if e.op is not None and not ops.REGISTRY[e.op].is_zero]


def cell_depth(cell: ir.Cell) -> int:
    """Connections on the longest path from a cell input to the output node (SDARTS 7.4).

    With `output concat(...)` the output node is the concatenation, one connection after the nodes it
    concatenates (as drawn in DARTS); with `output NODE` it is that node.
    """
    assert cell.output is not None
    live = _live_edges(cell)
    dist: dict[str, int] = {s: 0 for s in cell.input_names}
    for n in cell.node_names:  # nodes are in computation order (the verifier's acyclicity + builder order)
        ds = [dist[e.src] + 1 for e in live if e.dst == n and e.src in dist]
        if ds:
            dist[n] = max(ds)
    if cell.output.kind == "concat":
        return max((dist[n] + 1 for n in cell.output.nodes if n in dist), default=0)
    return dist.get(cell.output.nodes[0], 0)


def cell_width(cell: ir.Cell) -> Fraction:
    """Width in units of c, the width of one intermediate node (SDARTS 7.4)."""
    live = _live_edges(cell)
    inputs = set(cell.input_names)
    width = Fraction(0)
    for n in cell.node_names:
        into = [e for e in live if e.dst == n]
        from_inputs = sum(e.src in inputs for e in into)
        if from_inputs:
            width += Fraction(from_inputs, len(into))
    return width


def width_text(w: Fraction) -> str:
    return f"{float(w):.4g}c"


# ---- search-space size --------------------------------------------------------------------------------


def mixed_edges(cell: ir.Cell) -> int:
    return sum(e.is_choice for e in cell.edges)


def op_variables(cell: ir.Cell) -> int:
    """alpha: one per candidate op of each mixed edge (DARTS: 14 edges x 8 ops per cell kind)."""
    return sum(len(e.candidates) for e in cell.edges if e.is_choice)


# ---- topology variables of stretchable cells (the rows passes/topology.py writes; its docstring) ----
def successors(c: ir.Cell, node: str) -> tuple[str, ...]:
    """Intermediate nodes that a searchable edge from `node` reaches, in cell order."""
    dsts = {e.dst for e in c.edges if e.is_choice and e.src == node}
    return tuple(n for n in c.node_names if n in dsts)


def predecessors(c: ir.Cell, node: str) -> tuple[str, ...]:
    """States that reach `node` through a searchable edge, in cell order."""
    srcs = {e.src for e in c.edges if e.is_choice and e.dst == node}
    return tuple(s for s in c.states if s in srcs)


def beta_rows(c: ir.Cell) -> tuple[ir.BetaRow, ...]:
    """The rows of beta of a cell that declares `topology ...`: one per deciding node, one code per
    topology it can pick (passes/topology.py stores them on the cell; the reading is in its docstring)."""
    t = c.topology
    assert t is not None
    rows = []
    if t.kind == "inputs":
        for j in c.node_names:
            preds = predecessors(c, j)
            if preds:
                rows.append(ir.BetaRow(j, tuple(combinations(preds, min(t.k or 0, len(preds))))))
        return tuple(rows)
    for i in c.states:
        succ = successors(c, i)
        if not succ:
            continue
        if t.kind == "any":
            codes = tuple(code for r in range(len(succ) + 1) for code in combinations(succ, r))
        else:  # no code, so no row, when k > |successors| (C(n, k) = 0, see passes/topology.py's docstring)
            codes = tuple(combinations(succ, t.k or 0))
            if not codes:
                continue
        rows.append(ir.BetaRow(i, codes))
    return tuple(rows)


def _beta_rows(cell: ir.Cell) -> tuple[ir.BetaRow, ...]:
    return beta_rows(cell) if cell.topology is not None else ()


def topology_variables(cell: ir.Cell) -> int:
    """beta: one per topology code of each deciding node (stretchable cells; passes/topology.py)."""
    return sum(len(r.codes) for r in _beta_rows(cell))


def candidates(cell: ir.Cell, limits: Sequence[ir.Limit] = ()) -> int | None:
    """How many derived cells derivation (passes/derive.py) can produce from the space of `cell`.

    Derivation keeps every fixed edge, and
    - without a rule keeps every mixed edge with the argmax over all its ops, `none` included (the
      NAS-Bench-201 derivation, docs/methods.md "Derivation"): per edge, #ops;
    - with a rule gives every kept mixed edge one op other than `none`;
    - with `keep k inputs per node` keeps, per node, k of its *mixed* in-edges (all of them if it has
      fewer); the node's fixed edges stay besides them and do not count against k;
    - with `topology ...` (stretchable cells) keeps the edges of one code per deciding node; a
      topology that leaves an intermediate node without inputs is invalid and not counted;
    - `limit OP <= n per cell` (the search block's limits, passed as `limits`): at most n kept mixed
      edges of the cell carry OP (derivation moves the others to their next best op).
    Any assignment within these rules is produced by some scores, so this is the count of what
    derivation can produce (tested against brute-force enumeration). A derived cell has exactly one.
    None: an `outputs` topology with more code combinations than MAX_ENUMERATED_TOPOLOGIES.
    """
    if not cell.is_search_space:
        return 1
    if cell.topology is not None:
        return _topology_candidates(cell, limits)
    return _keep_candidates(cell, limits)


def _op_choices(e: ir.Edge, with_none: bool = False) -> list[str]:
    return [o for o in e.candidates if o in ops.REGISTRY and (with_none or not ops.REGISTRY[o].is_zero)]


class _Usage:
    """Counts of assignments by how often each limited op is used, over-limit states dropped: a
    polynomial in one variable per limited op, truncated at the limits."""

    def __init__(self, limits: Sequence[ir.Limit]):
        caps: dict[str, int] = {}
        for lim in limits:
            caps[lim.op] = min(caps.get(lim.op, lim.max), lim.max)
        self.names = sorted(caps)
        self.caps = tuple(caps[n] for n in self.names)
        self.index = {n: i for i, n in enumerate(self.names)}

    def one(self) -> dict[tuple[int, ...], int]:
        return {(0,) * len(self.names): 1}

    def edge(self, choices: list[str]) -> dict[tuple[int, ...], int]:
        out: dict[tuple[int, ...], int] = {}
        for op in choices:
            key = [0] * len(self.names)
            if op in self.index:
                key[self.index[op]] = 1
            if all(k <= c for k, c in zip(key, self.caps)):
                out[tuple(key)] = out.get(tuple(key), 0) + 1
        return out

    def mul(self, a: dict, b: dict) -> dict[tuple[int, ...], int]:
        out: dict[tuple[int, ...], int] = {}
        for ka, va in a.items():
            for kb, vb in b.items():
                key = tuple(x + y for x, y in zip(ka, kb))
                if all(k <= c for k, c in zip(key, self.caps)):
                    out[key] = out.get(key, 0) + va * vb
        return out

    def add(self, a: dict, b: dict) -> dict[tuple[int, ...], int]:
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + v
        return out


def _keep_candidates(cell: ir.Cell, limits: Sequence[ir.Limit]) -> int:
    u = _Usage(limits)
    total = u.one()
    for n in cell.node_names:
        mixed = [_op_choices(e, with_none=cell.keep is None) for e in cell.in_edges(n) if e.is_choice]
        k = len(mixed) if cell.keep is None else min(cell.keep, len(mixed))
        node: dict = {}
        for subset in combinations(mixed, k):
            ways = u.one()
            for choices in subset:
                ways = u.mul(ways, u.edge(choices))
            node = u.add(node, ways)
        total = u.mul(total, node)
    return sum(total.values())


# `outputs` topologies couple the rows (every node needs an input from some row's code): they are
# counted by enumerating every combination of codes, up to this many; past it info says "not counted".
MAX_ENUMERATED_TOPOLOGIES = 200_000


def _topology_candidates(cell: ir.Cell, limits: Sequence[ir.Limit] = ()) -> int | None:
    t = cell.topology
    assert t is not None
    rows = _beta_rows(cell)
    u = _Usage(limits)
    choice = {(e.src, e.dst): u.edge(_op_choices(e)) for e in cell.edges if e.is_choice}
    fixed_into = {e.dst for e in cell.edges if not e.is_choice}
    if t.kind == "inputs":  # one row per destination node: the rows are independent, the count factorizes
        deciding = {r.node for r in rows}
        if not all(n in fixed_into or n in deciding for n in cell.node_names):
            return 0
        total_ways = u.one()
        for row in rows:
            node: dict = {}
            for code in row.codes:
                ways = u.one()
                for s in code:
                    ways = u.mul(ways, choice[(s, row.node)])
                node = u.add(node, ways)
            total_ways = u.mul(total_ways, node)
        return sum(total_ways.values())
    rows = [r for r in rows if r.codes]  # a state with fewer than k successors has no code: no output edge
    if math.prod(len(r.codes) for r in rows) > MAX_ENUMERATED_TOPOLOGIES:
        return None
    total = 0
    for picks in product(*(r.codes for r in rows)):
        edges = set()
        for row, code in zip(rows, picks):
            edges |= {(s, row.node) for s in code} if t.kind == "inputs" else {(row.node, d) for d in code}
        if all(n in fixed_into or any(d == n for _, d in edges) for n in cell.node_names):
            ways = u.one()
            for e in sorted(edges):
                if e in choice:
                    ways = u.mul(ways, choice[e])
            total += sum(ways.values())
    return total


# ---- the report ---------------------------------------------------------------------------------------


def cell_kinds(spec: ir.Spec, plan: Any) -> list[ir.Cell]:
    """The cell kinds the elaborated network stacks, in order (every cell of the spec without a plan)."""
    names: Iterable[str] = dict.fromkeys(b.cell for b in plan.cells) if plan is not None else (c.name for c in spec.cells)
    return [c for c in (spec.cell(n) for n in names) if c is not None]


def _render_recurrent(d: dict[str, Any]) -> str:
    env = ", ".join(f"{k} = {v}" for k, v in d["parameters"].items())
    lines = [f"{d['file']}: network {d['network']}({env}), language model, vocabulary {d['tokens']}, "
             f"ninp = nhid = {d['nhid']}" + (", search space" if d["search_space"] else "")]  # fmt: skip
    what = "supernet parameters" if d["search_space"] else "parameters    "
    lines.append(f"  {what} {_n(d['params'])} ({_short(d['params'])}), the tied decoder counted once")
    lines.append(f"  untied         {_n(d['params_untied'])} ({_short(d['params_untied'])}), the decoder weight counted separately")
    lines.append(f"  MACs per token {_n(d['macs_per_token'])} ({_short(d['macs_per_token'])})")
    for c in d["cells"]:
        shape = f"depth {c['depth']}" if c["depth"] is not None else f"{c['mixed_edges']} mixed edges, {c['op_variables']} alphas"
        lines.append(f"  cell {c['name']} (recurrent): {c['nodes']} nodes, {shape}")
    s = d.get("space")
    if s:
        lines.append(f"  candidates     {_count(s['candidates'])} (k = 1 input per node)")
    return "\n".join(lines)


def _n(x: int) -> str:
    return f"{x:,}"


def _count(n: int | None) -> str:
    """A count exactly up to 10**12, then as a power of ten from its digits (float() overflows past 1e308)."""
    if n is None:
        return f"not counted (more than {MAX_ENUMERATED_TOPOLOGIES:,} topologies to enumerate)"
    if n < 10**6:
        return _n(n)
    from decimal import Decimal

    approx = f"about {Decimal(n):.2e}"  # exact decimal rounding of any int
    return f"{_n(n)} ({approx})" if n < 10**12 else approx


def _short(x: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return str(x)


def render(d: dict[str, Any]) -> str:
    """The text `nasir info` prints."""
    if d.get("kind") == "recurrent":
        return _render_recurrent(d)
    env = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in d["parameters"].items())
    shape = "x".join(map(str, d["input"]))
    lines = [f"{d['file']}: network {d['network']}({env}), input {shape}" + (", search space" if d["search_space"] else "")]
    if d["params"] is not None:
        lines.append(f"  parameters     {_n(d['params'])} ({_short(d['params'])})")
        lines.append(f"  without aux    {_n(d['params_no_aux'])} ({_short(d['params_no_aux'])})")
        lines.append(f"  MACs           {_n(d['macs'])} ({_short(d['macs'])}) per {shape} image")
    at = d.get("at_input")
    if at:
        s_in = "x".join(map(str, at["input"]))
        lines.append(f"  at {s_in}: MACs {_n(at['macs'])} ({_short(at['macs'])}); backbone (stems and cells) "
                     f"{_n(at['backbone_macs'])} MACs ({_short(at['backbone_macs'])}), {_short(at['backbone_flops'])} FLOPs (2 x MACs)")  # fmt: skip
    s = d.get("space")
    if s:
        per = ", ".join(f"{c['name']} {c['mixed_edges']}" for c in d["cells"])
        lines.append(f"  mixed edges              {s['mixed_edges']} ({per})")
        per = ", ".join(f"{c['name']} {c['op_variables']}" + (f" + {c['topology_variables']} topology" if c["topology_variables"] else "")
                        for c in d["cells"])  # fmt: skip
        lines.append(f"  architecture variables   {s['architecture_variables']} ({per})")
        sn = s["supernet_weight_params"]
        lines.append("  supernet weights         " + (f"{_n(sn)} ({_short(sn)})" if sn is not None else f"n/a ({s['supernet_note']})"))
        n = s["candidates"]
        lines.append(f"  candidate architectures  {_count(n)}")
    lines.append("  cells")
    for c in d["cells"]:
        kind = "reduction" if c["reduction"] else "normal"
        head = f"    {c['name']:<10} x{c['instances']:<3} {kind:<9} {c['nodes']} nodes, {c['edges']} edges"
        if c["depth"] is not None:
            head += f"; depth {c['depth']}, width {c['width_text']}"
        else:
            head += f"; {_count(c['candidates'])} candidates" if c["candidates"] is not None else "; candidates not counted"
        lines.append(head)
    return "\n".join(lines)
