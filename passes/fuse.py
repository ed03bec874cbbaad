"""fuse_ops: plan how the supernet runs the mixed edges of each cell as fewer, larger operations.

DARTS' mixed op (docs/methods.md, DARTS: o_bar(x) = sum_o softmax(alpha)_o o(x)) runs every candidate of
every edge on its own. Seen as a graph, all candidates of an edge and all edges leaving one state read
the same tensor, so (docs/performance.md, "Fusion"):
- the candidates that begin with ReLU(x) (sep/dil conv, ReLUConvBN, conv 7x1-1x7, factorized reduce)
  share one ReLU of the state, across all edges leaving it;
- each pooling candidate runs once per state, and the BN after it once (its output does not depend on
  the running statistics in training; every BN still updates its own statistics);
- a candidate ending in a non-affine BN takes its softmax weight as that BN's scale, so the weighted sum
  needs no product for it; the other terms are summed by one fused multiply-accumulate per term.

The plan is a function of the IR alone (`fusion_groups`); the runtime (nasir/search/supernet.py,
FusedCell) runs each cell state by state from it. The pass itself records the `fuse_ops` property;
`describe` renders the plan as text (what `--dump-after fuse_ops` shows once the printer prints it).
Values equal the unfused supernet's up to float rounding.
"""

from __future__ import annotations

import attrs

from nasir import ir, ops
from nasir.pipeline import Pass, PassResult

# Registry builders whose op begins with ReLU(x) and ends with a non-affine BN in the supernet.
RELU_FIRST = frozenset({"sep_conv", "dil_conv", "relu_conv_bn", "conv_7x1_1x7"})


@attrs.frozen
class StateGroup:
    """The mixed edges leaving one state, run together once the state exists."""

    state: str
    edges: tuple[int, ...]  # edge indices (IR order) of the mixed edges reading `state`
    dsts: tuple[str, ...]  # their destination nodes, in the same order
    relu: tuple[tuple[int, str], ...]  # (edge, candidate) reading the one shared ReLU(state)
    pools: tuple[str, ...]  # pooling candidates computed once for all these edges
    folded: tuple[tuple[int, str], ...]  # (edge, candidate) whose final BN takes the softmax weight


def _relu_first(name: str, stride: int) -> bool:
    d = ops.REGISTRY[name]
    return d.builder in RELU_FIRST or (d.builder == "skip_connect" and stride == 2)


def fusion_groups(cell: ir.Cell) -> tuple[StateGroup, ...]:
    """One group per state with at least one mixed edge leaving it, in the cell's state order."""
    out = []
    for s in cell.states:
        idx = [k for k, e in enumerate(cell.edges) if e.src == s and e.alpha is not None]
        if not idx:
            continue
        relu, pools, folded = [], [], []
        for k in idx:
            e = cell.edges[k]
            stride = cell.stride(e)
            for o in e.computed if e.computed is not None else e.candidates:
                if _relu_first(o, stride):
                    relu.append((k, o))
                    folded.append((k, o))
                elif ops.REGISTRY[o].is_pool and o not in pools:
                    pools.append(o)
        out.append(StateGroup(s, tuple(idx), tuple(cell.edges[k].dst for k in idx), tuple(relu), tuple(pools),
                              tuple(folded)))  # fmt: skip
    return tuple(out)


def describe(spec: ir.Spec) -> str:
    """The fusion plan of every searched cell, one line per state group."""
    lines = []
    for c in spec.cells:
        if c.alpha_rows is None:
            continue
        lines.append(f"# fused cell {c.name}:")
        for g in fusion_groups(c):
            n_relu = len(g.relu)
            lines.append(f"#   {g.state}: {len(g.edges)} mixed edge(s) -> {', '.join(g.dsts)}; one ReLU for {n_relu} candidate(s)"
                         + (f", one {' and one '.join(g.pools)}" if g.pools else "")
                         + f"; {len(g.folded)} weight(s) folded into BN")  # fmt: skip
    return "\n".join(lines) + ("\n" if lines else "")


class FuseOps(Pass):
    name = "fuse_ops"
    requires = frozenset({"mixed_ops", "zero_ops"})
    ensures = frozenset({"fuse_ops"})

    def run(self, spec: ir.Spec) -> PassResult:
        # The plan is derived from the IR on demand (`fusion_groups`); the IR itself is unchanged.
        return PassResult(spec, False)
