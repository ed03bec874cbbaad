"""dead_nodes: after derivation, drop nodes with no inputs or no consumers, with their edges.

Runs to a fixed point: removing a node can leave its sources without consumers. A node counts as
consumed when it is in the cell output or feeds a later node. Removing a node that was concatenated
into the output narrows the cell (stretchable cells end with fewer nodes than DARTS' four).
"""

from __future__ import annotations

import attrs

from nasir import ir
from nasir.pipeline import Pass, PassResult


def eliminate(c: ir.Cell) -> ir.Cell:
    nodes = list(c.nodes)
    edges = list(c.edges)
    out = list(c.output.nodes) if c.output else []
    inputs = set(c.input_names)
    while True:
        alive = {n.name for n in nodes} | inputs
        fed = {e.dst for e in edges if e.src in alive}
        consumed = {e.src for e in edges if e.dst in alive} | set(out)
        dead = {n.name for n in nodes if n.name not in fed or n.name not in consumed}
        if c.output is not None and c.output.kind == "node":
            dead.discard(c.output.nodes[0]) if c.output.nodes[0] in fed else None
        if not dead:
            break
        nodes = [n for n in nodes if n.name not in dead]
        edges = [e for e in edges if e.src not in dead and e.dst not in dead]
        out = [n for n in out if n not in dead]
    output = attrs.evolve(c.output, nodes=tuple(out)) if c.output is not None else None
    return attrs.evolve(c, nodes=tuple(nodes), edges=tuple(edges), output=output)


class DeadNodes(Pass):
    name = "dead_nodes"

    def run(self, spec: ir.Spec) -> PassResult:
        cells = tuple(eliminate(c) for c in spec.cells)
        return PassResult(attrs.evolve(spec, cells=cells), cells != spec.cells)
