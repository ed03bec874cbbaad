"""What `nasir info` reports: size and cost of a derived network, shape of its cells, size of a search space.

- Parameters and MACs are counted on the built module (targets/blocks.py `count_params`,
  `count_macs`, by the rules of shared/design/ops.md, "Counting rules").
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
from pathlib import Path
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


def _fmt_width(w: Fraction) -> str:
    return f"{float(w):.4g}c"


# ---- search-space size --------------------------------------------------------------------------------


def _real_ops(e: ir.Edge) -> int:
    return sum(not ops.REGISTRY[o].is_zero for o in e.candidates if o in ops.REGISTRY)


def _elementary(ms: Sequence[int], k: int) -> int:
    """Sum over k-subsets of the product of their entries: ways to keep k edges, each with one of its ops."""
    return sum(math.prod(c) for c in combinations(ms, k))


def mixed_edges(cell: ir.Cell) -> int:
    return sum(e.is_choice for e in cell.edges)


def op_variables(cell: ir.Cell) -> int:
    """alpha: one per candidate op of each mixed edge (DARTS: 14 edges x 8 ops per cell kind)."""
    return sum(len(e.candidates) for e in cell.edges if e.is_choice)


def _beta_rows(cell: ir.Cell) -> tuple[ir.BetaRow, ...]:
    from nasir.passes.topology import beta_rows

    return beta_rows(cell) if cell.topology is not None else ()


def topology_variables(cell: ir.Cell) -> int:
    """beta: one per topology code of each deciding node (stretchable cells; passes/topology.py)."""
    return sum(len(r.codes) for r in _beta_rows(cell))


def candidates(cell: ir.Cell) -> int:
    """How many derived cells the space of `cell` holds under its derivation rule.

    - no rule: every edge stays and carries one of its ops ('none' included): product of #ops.
    - `keep k inputs per node`: each node keeps k of its input edges, each with one op other than
      'none': per node, C(#inputs, k) * (#ops excluding none)^k when the edges share one op set.
    - `topology ...` (stretchable cells): each deciding node picks one of its codes (which edges
      exist); every existing edge carries one op other than 'none'; a topology that leaves an
      intermediate node without inputs is invalid and not counted.
    Fixed edges contribute one choice. A derived cell has exactly one architecture.
    """
    if not cell.is_search_space:
        return 1
    t = cell.topology
    if t is None and cell.keep is None:
        return math.prod(len(e.candidates) for e in cell.edges)
    if t is None:
        return math.prod(_elementary([_real_ops(e) for e in cell.in_edges(n)], cell.keep) for n in cell.node_names)  # type: ignore[arg-type]
    return _topology_candidates(cell)


def _topology_candidates(cell: ir.Cell) -> int:
    t = cell.topology
    assert t is not None
    rows = _beta_rows(cell)
    choice = {(e.src, e.dst): _real_ops(e) for e in cell.edges if e.is_choice}
    fixed_into = {e.dst for e in cell.edges if not e.is_choice}
    total = 0
    for picks in product(*(r.codes for r in rows)):
        edges = set()
        for row, code in zip(rows, picks):
            edges |= {(s, row.node) for s in code} if t.kind == "inputs" else {(row.node, d) for d in code}
        if all(n in fixed_into or any(d == n for _, d in edges) for n in cell.node_names):
            total += math.prod(choice[e] for e in edges)
    return total


# ---- the report ---------------------------------------------------------------------------------------


def _cell_kinds(spec: ir.Spec, plan: Any) -> list[ir.Cell]:
    names: Iterable[str] = dict.fromkeys(b.cell for b in plan.cells) if plan is not None else (c.name for c in spec.cells)
    return [c for c in (spec.cell(n) for n in names) if c is not None]


def _supernet_weights(spec: ir.Spec, plan: Any) -> tuple[int | None, str | None]:
    """Weight parameters of the search supernet (nasir.search.supernet), or None and why not."""
    from nasir.diagnostics import DiagnosticError

    try:
        from nasir.search.supernet import build_supernet
    except ImportError as e:
        return None, f"no supernet builder ({e.name or e})"
    try:
        with _shapes_only():
            net = build_supernet(spec, plan, seed=0)
    except DiagnosticError as e:
        return None, e.diagnostics[0].message if e.diagnostics else "the supernet cannot be built"
    return sum(p.numel() for p in net.weight_parameters()), None


def _shapes_only():
    """Build on PyTorch's meta device: parameters and activations have shapes but no storage, so
    counting parameters and MACs (a forward pass with hooks that read only shapes) costs no memory
    and no arithmetic, whatever the input size or width (`input (3, 20000, 20000)`, `--set C=100000`
    used to allocate 100+ GB; issue 14.12). The counts are those of the real network (tested)."""
    import torch

    return torch.device("meta")


def info(spec: ir.Spec | str | Path, overrides: Any = None) -> dict[str, Any]:
    """Everything `nasir info` shows, as JSON-serialisable data (see the module docstring)."""
    from nasir.compile import resolve

    spec, plan = resolve(spec, overrides)
    kinds = _cell_kinds(spec, plan)
    counts = {c.name: sum(b.cell == c.name for b in plan.cells) for c in kinds}
    space = any(c.is_search_space for c in kinds)
    out: dict[str, Any] = {
        "file": spec.file,
        "network": plan.network,
        "parameters": dict(plan.env),
        "input": list(plan.input),
        "search_space": space,
        "cells": [],
    }
    for c in kinds:
        entry: dict[str, Any] = {
            "name": c.name, "instances": counts[c.name], "reduction": c.reduction, "inputs": len(c.inputs),
            "nodes": len(c.nodes), "edges": len(c.edges),
        }  # fmt: skip
        entry.update(mixed_edges=mixed_edges(c), op_variables=op_variables(c), topology_variables=topology_variables(c),
                     candidates=candidates(c))  # fmt: skip
        if c.is_search_space:
            entry.update(depth=None, width=None, width_text=None)
        else:
            w = cell_width(c)
            entry.update(depth=cell_depth(c), width=float(w), width_text=_fmt_width(w))
        out["cells"].append(entry)
    if space:
        sn, why = _supernet_weights(spec, plan)
        out["params"] = out["params_no_aux"] = out["macs"] = None
        out["space"] = {
            "mixed_edges": sum(e["mixed_edges"] for e in out["cells"]),
            "architecture_variables": sum(e["op_variables"] + e["topology_variables"] for e in out["cells"]),
            "supernet_weight_params": sn,
            "supernet_note": why,
            "candidates": math.prod(e["candidates"] for e in out["cells"]),
        }
        return out
    from nasir.compile import build_from_plan
    from nasir.targets.blocks import count_macs, count_params

    with _shapes_only():
        model = build_from_plan(spec, plan)
    total = count_params(model)
    aux = count_params(model.auxiliary_head) if model.auxiliary_head is not None else 0
    out.update(params=total, params_no_aux=total - aux, macs=count_macs(model, plan.input), space=None)
    return out


def _n(x: int) -> str:
    return f"{x:,}"


def _short(x: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return str(x)


def render(d: dict[str, Any]) -> str:
    """The text `nasir info` prints."""
    env = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in d["parameters"].items())
    shape = "x".join(map(str, d["input"]))
    lines = [f"{d['file']}: network {d['network']}({env}), input {shape}" + (", search space" if d["search_space"] else "")]
    if d["params"] is not None:
        lines.append(f"  parameters     {_n(d['params'])} ({_short(d['params'])})")
        lines.append(f"  without aux    {_n(d['params_no_aux'])} ({_short(d['params_no_aux'])})")
        lines.append(f"  MACs           {_n(d['macs'])} ({_short(d['macs'])}) per {shape} image")
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
        approx = f" (about {n:.2e})" if n >= 10**6 else ""
        lines.append(f"  candidate architectures  {_n(n)}{approx}")
    lines.append("  cells")
    for c in d["cells"]:
        kind = "reduction" if c["reduction"] else "normal"
        head = f"    {c['name']:<10} x{c['instances']:<3} {kind:<9} {c['nodes']} nodes, {c['edges']} edges"
        if c["depth"] is not None:
            head += f"; depth {c['depth']}, width {c['width_text']}"
        else:
            head += f"; {_n(c['candidates'])} candidates"
        lines.append(head)
    return "\n".join(lines)
