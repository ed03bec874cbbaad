"""Stretchable-cell topology variables at run time: merged factors, regulariser, derivation.

The rows of beta come from passes/topology.py (`Cell.beta_rows`, one 1-D tensor per row here, in
that order). Every variant reduces to one merged factor s(i, j) per edge, so a node computes
x_j = sum_i s(i, j) * o_bar_ij(x_i) and the memory stays that of DARTS (stretchable-cells Eq. 6 / 9).
Fixed edges and any searchable edge that no row decides get s = 1: they always exist.

How the runtime plugs these in:
- forward: `s = merged_factors(cell, betas)`; edge k of `cell.edges` outputs `s[k] * mixed_op_k(x)`;
- beta loss: `L_task + 10 * passive_aggressive(cell, betas)` (Eq. 15, lambda = 10);
- derivation: `Derive(scores, keep_edges={cell.name: most_likely_edges(cell, betas)},
  remove_nodes={cell.name: removed_nodes(cell, betas)})`; nodes left without inputs are then removed
  by dead-node elimination inside Derive.
Under `topology outputs k` a node with fewer than k successors has no row (passes/topology.py): its
searchable output edges never exist (merged factor 0, never kept).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from nasir import ir

NEVER = "never"  # `_decided_by` for an edge that no code can contain: `outputs k` from a node with < k successors


def _decided_by(cell: ir.Cell) -> list[tuple[int, str] | str | None]:
    """Per edge of `cell.edges`: (row index, the edge end that the row's codes name), None (fixed or
    undecided: always exists) or NEVER (its source has no row under `outputs k`)."""
    rows = {r.node: k for k, r in enumerate(cell.beta_rows or ())}
    inputs = cell.topology is not None and cell.topology.kind == "inputs"
    out: list[tuple[int, str] | str | None] = []
    for e in cell.edges:
        if not e.is_choice:
            out.append(None)
        elif inputs:  # node j chooses among its sources (Eq. 3)
            out.append((rows[e.dst], e.src) if e.dst in rows else None)
        else:  # node i chooses among its successors (Eq. 7, 11); a source without a row picks none of them
            out.append((rows[e.src], e.dst) if e.src in rows else NEVER)
    return out


def _row_scale(cell: ir.Cell, row: ir.BetaRow) -> float:
    """The normalisation of a row's merged probabilities."""
    assert cell.topology is not None
    kind = cell.topology.kind
    if kind == "inputs":
        return 1.0  # Eq. 6 has none: every node sums k inputs whatever the code
    n = len({s for code in row.codes for s in code})
    if kind == "any" and n == 0:
        return 0.0
    if kind == "any":
        # Eq. 13, (2^(N-i) - 1) / 2^(N-i-1), with N - i read as n = |successors of i| (passes/topology.py).
        # Kept as printed although the rows include the empty code: the constant makes s = 1 under
        # uniform beta only over the 2^n - 1 non-empty codes (Eq. 11 sums n = 1..N-i); with the
        # empty code, uniform beta gives s = 1 - 2^-n.
        return (2**n - 1) / 2 ** (n - 1)
    # Eq. 10, C(N-i, 2) / C(N-i-1, 1), generalised to k-subsets: C(n, k) / C(n-1, k-1) = n / k, which
    # makes s = 1 under uniform beta. A node with n < k successors has no code: its factors are 0.
    if not row.codes:
        return 0.0
    k = len(row.codes[0])
    return math.comb(n, k) / math.comb(n - 1, k - 1)


@functools.lru_cache(maxsize=64)
def _plan(cell: ir.Cell, device: torch.device, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per row, scale * membership [codes, edges]; and the constant part (1 on undecided edges)."""
    rows = cell.beta_rows or ()
    decided = _decided_by(cell)
    mats = [torch.zeros(len(r.codes), len(cell.edges), dtype=dtype) for r in rows]
    base = torch.zeros(len(cell.edges), dtype=dtype)
    for k, d in enumerate(decided):
        if d is None:
            base[k] = 1.0
            continue
        if d == NEVER:
            continue
        r, end = d
        for c, code in enumerate(rows[r].codes):
            if end in code:
                mats[r][c, k] = 1.0
    mats = [(m * _row_scale(cell, r)).to(device) for m, r in zip(mats, rows)]
    return mats, base.to(device)


def _check(cell: ir.Cell, betas: Sequence[torch.Tensor]) -> None:
    rows = cell.beta_rows
    if cell.topology is None or rows is None:
        raise ValueError(f"cell '{cell.name}' has no topology variables; run passes/topology.py first")
    if len(betas) != len(rows) or any(b.shape != (len(r.codes),) for b, r in zip(betas, rows)):
        want = [len(r.codes) for r in rows]
        got = [tuple(b.shape) for b in betas]
        raise ValueError(f"cell '{cell.name}': betas must have sizes {want}, got {got}")


def beta_sizes(cell: ir.Cell) -> list[int]:
    """The length of each beta tensor, in `cell.beta_rows` order."""
    return [len(r.codes) for r in cell.beta_rows or ()]


def merged_factors(cell: ir.Cell, betas: Sequence[torch.Tensor]) -> torch.Tensor:
    """s(i, j) per edge of `cell.edges`, differentiable in `betas` (Eq. 6, 10 or 13 by the cell's topology).

    s(i, j) = scale_row * sum of softmax(beta_row) over the codes of the deciding row that contain
    the edge's other end; 1 on fixed edges.
    """
    _check(cell, betas)
    ref = betas[0] if betas else torch.zeros(())
    mats, base = _plan(cell, ref.device, ref.dtype)
    s = base
    for m, b in zip(mats, betas):
        s = s + torch.softmax(b, dim=0) @ m
    return s


def passive_aggressive(cell: ir.Cell, betas: Sequence[torch.Tensor]) -> torch.Tensor:
    """r(beta), Eq. 14: sum over intermediate nodes j of prod over i feeding j of (1 - max_{b_i^j=1} p / max p).

    A factor is 0 when some most likely code of i feeds j, so r = 0 exactly when, under the most
    likely codes, every intermediate node keeps an input; a node no predecessor is likely to feed
    adds a positive product. Readings taken: the paper's "sum over j < N" is over the intermediate
    nodes, the last one included (the inputs have no predecessors and would add a constant 1); a
    node with a fixed input edge always has an input and adds 0. Under `topology inputs k` every
    node picks k >= 1 inputs whatever its code, so r = 0 identically (the paper defines r for the
    output perspective only).
    """
    _check(cell, betas)
    ref = betas[0] if betas else torch.zeros(())
    total = ref.new_zeros(())
    if cell.topology is not None and cell.topology.kind == "inputs":
        return total
    rows = cell.beta_rows or ()
    probs = [torch.softmax(b, dim=0) for b in betas]
    for j in cell.node_names:
        if any(not e.is_choice for e in cell.in_edges(j)):
            continue
        term = ref.new_ones(())
        for r, p in zip(rows, probs):
            feeds = [c for c, code in enumerate(r.codes) if j in code]
            if feeds:
                term = term * (1 - p[feeds].max() / p.max())
        total = total + term
    return total


def most_likely_codes(cell: ir.Cell, betas: Sequence[torch.Tensor]) -> dict[str, tuple[str, ...]]:
    """The most likely code per deciding node (on ties the first code, as argmax picks)."""
    _check(cell, betas)
    out = {}
    for r, b in zip(cell.beta_rows or (), betas):
        values = b.detach().tolist()
        out[r.node] = r.codes[max(range(len(values)), key=values.__getitem__)] if values else ()
    return out


def removed_nodes(cell: ir.Cell, betas: Sequence[torch.Tensor]) -> set[str]:
    """Intermediate nodes whose most likely code is the empty one under `topology outputs any`.

    The paper's empty code is "for removing the node" (stretchable-cells, before Eq. 11): the derived
    cell drops such a node, its input edges and its slot in the output concatenation (Derive's
    `remove_nodes`). Under `outputs k` and `inputs k` there is no empty code (a node without codes
    under `outputs k` keeps its inputs and its concatenation slot): the set is empty.
    """
    if cell.topology is None or cell.topology.kind != "any":
        return set()
    codes = most_likely_codes(cell, betas)
    return {n for n in cell.node_names if n in codes and codes[n] == ()}


def most_likely_edges(cell: ir.Cell, betas: Sequence[torch.Tensor]) -> set[tuple[str, str]]:
    """The searchable edges (src, dst) that exist under the most likely code of every row.

    What `Derive(..., keep_edges={cell.name: ...})` takes: per node it keeps exactly these edges, so
    a derived node can have any number of inputs, none included (then dead-node elimination removes it).
    """
    codes = most_likely_codes(cell, betas)
    rows = cell.beta_rows or ()
    keep = set()
    for e, d in zip(cell.edges, _decided_by(cell)):
        if not e.is_choice or d == NEVER:
            continue
        if d is None or d[1] in codes[rows[d[0]].node]:  # type: ignore[index]
            keep.add((e.src, e.dst))
    return keep
