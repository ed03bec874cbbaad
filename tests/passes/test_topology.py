"""passes/topology.py as TVM writes pass tests: before spec -> run pass -> equal to the expected spec."""

from __future__ import annotations

import attrs
import pytest
from helpers import EXAMPLES, spec_of

from nasir import ir
from nasir.api import load
from nasir.passes.mixed_ops import MixedOps
from nasir.passes.topology import Topology
from nasir.passes.zero_ops import ZeroOps
from nasir.pipeline import PassManager
from nasir.printer import print_spec

OPS = "opset darts = {none, max_pool_3x3, skip_connect, sep_conv_3x3}\n"


def cell_text(topology: str, ops: str = "darts", edges: str | None = None) -> str:
    edges = edges or f"edges * -> n* : choice({ops})"
    return (
        OPS
        + f"""
cell c {{
  inputs a, b
  nodes n0..n2
  {edges}
  topology {topology}
  output concat(n0..n2)
}}
"""
    )


def after(text: str, passes=None) -> ir.Spec:
    return PassManager(passes or [MixedOps(), Topology()], verify=True).apply(spec_of(text))


def expected(topology: str, rows: dict[str, list[tuple[str, ...]]], edges: str | None = None) -> ir.Cell:
    """The same cell written without `none`, through mixed_ops, with the beta rows given by hand."""
    c = PassManager([MixedOps()]).apply(spec_of(cell_text(topology, "darts - none", edges))).cell("c")
    return attrs.evolve(c, beta_rows=tuple(ir.BetaRow(n, tuple(codes)) for n, codes in rows.items()))


def test_outputs_any_gives_every_state_with_successors_all_subsets_empty_code_included():
    # Successors: a, b -> n0, n1, n2; n0 -> n1, n2; n1 -> n2; n2 feeds only the output: no row.
    # Eq. 11, stretchable-cells: 2^(N-i) codes per node, the empty one removing the node's outputs.
    three = [(), ("n0",), ("n1",), ("n2",), ("n0", "n1"), ("n0", "n2"), ("n1", "n2"), ("n0", "n1", "n2")]
    want = expected(
        "outputs any", {"a": three, "b": three, "n0": [(), ("n1",), ("n2",), ("n1", "n2")], "n1": [(), ("n2",)]}
    )
    got = after(cell_text("outputs any")).cell("c")
    assert got == want
    assert [len(r.codes) for r in got.beta_rows] == [2**3, 2**3, 2**2, 2**1]


def test_outputs_pairs_rows_are_successor_pairs_and_a_single_successor_has_no_row():
    # Eq. 7-8: |beta~_i| = C(n, 2) pairs per node; n1 has one successor, C(1, 2) = 0: no variable, no row.
    pairs = [("n0", "n1"), ("n0", "n2"), ("n1", "n2")]
    want = expected("outputs 2", {"a": pairs, "b": pairs, "n0": [("n1", "n2")]})
    assert after(cell_text("outputs 2")).cell("c") == want


def test_outputs_2_in_the_darts_sized_cell_derives_the_papers_8_edges_for_every_code_choice():
    # "keeps the same edge number 8 as DARTS" (stretchable-cells, Sec. 4): enumerate every combination of
    # most likely codes (one per row) and count the edges the derivation keeps.
    import itertools

    import torch

    from nasir.search.topology import most_likely_edges

    text = OPS + """
cell c {
  inputs a, b
  nodes n0..n3
  edges * -> n* : choice(darts)
  topology outputs 2
  output concat(n0..n3)
}
"""
    c = after(text).cell("c")
    sizes = [len(r.codes) for r in c.beta_rows]
    assert sizes == [6, 6, 3, 1]  # C(4,2), C(4,2), C(3,2), C(2,2); n2 has C(1,2) = 0 codes and no row
    counts = set()
    for choice in itertools.product(*[range(n) for n in sizes]):
        betas = [torch.nn.functional.one_hot(torch.tensor(k), n).float() for n, k in zip(sizes, choice)]
        counts.add(len(most_likely_edges(c, betas)))
    assert counts == {8}


def test_inputs_pairs_rows_decide_per_intermediate_node_and_inputs_carry_no_variables():
    # Eq. 3: tau_j = the C(j-1, 2) pairs of predecessors; tau_1 = tau_2 = empty for the cell inputs.
    want = expected("inputs 2", {
        "n0": [("a", "b")],
        "n1": [("a", "b"), ("a", "n0"), ("b", "n0")],
        "n2": [("a", "b"), ("a", "n0"), ("a", "n1"), ("b", "n0"), ("b", "n1"), ("n0", "n1")],
    })  # fmt: skip
    assert after(cell_text("inputs 2")).cell("c") == want


def test_fixed_edges_are_not_topology_decisions():
    edges = "edges a -> n0 : skip_connect\n  edges b -> n0 : choice(darts)\n  edges * -> n1 : choice(darts)\n  edges * -> n2 : choice(darts)"
    edges_exp = edges.replace("choice(darts)", "choice(darts - none)")
    got = after(cell_text("outputs any", edges=edges)).cell("c")
    # a -> n0 is fixed, so a's successors are n1 and n2 only.
    want = expected("outputs any", {
        "a": [(), ("n1",), ("n2",), ("n1", "n2")],
        "b": [(), ("n0",), ("n1",), ("n2",), ("n0", "n1"), ("n0", "n2"), ("n1", "n2"), ("n0", "n1", "n2")],
        "n0": [(), ("n1",), ("n2",), ("n1", "n2")],
        "n1": [(), ("n2",)],
    }, edges=edges_exp)  # fmt: skip
    assert got == want


def test_none_leaves_choices_alpha_rows_and_computed_consistently():
    spec = after(cell_text("outputs any"), [MixedOps(), ZeroOps(), Topology()])
    c = spec.cell("c")
    assert all("none" not in r for r in c.alpha_rows)
    for e in c.edges:
        assert c.alpha_rows[e.alpha] == e.candidates == e.computed == ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
    # The rewritten choice expression parses back to the same candidates.
    again = load(print_spec(spec), name="t.cell").cell("c")
    assert [e.candidates for e in again.edges] == [e.candidates for e in c.edges]
    assert not any(w.severity == "warning" for w in load(print_spec(spec), name="t.cell").warnings)


def test_cells_without_topology_are_untouched_and_the_pass_is_idempotent():
    text = (
        cell_text("outputs any")
        + "cell d {\n  inputs a, b\n  nodes n0\n  edges * -> n0 : choice(darts)\n  output concat(n0)\n}\n"
    )
    mixed = PassManager([MixedOps()]).apply(spec_of(text))
    once = Topology().run(mixed)
    assert once.modified and once.spec.cell("d") == mixed.cell("d")
    assert "none" in once.spec.cell("d").alpha_rows[0]
    twice = Topology().run(once.spec)
    assert not twice.modified and twice.spec == once.spec


def test_topology_requires_mixed_ops_and_ensures_topology():
    with pytest.raises(RuntimeError, match="requires"):
        PassManager([Topology()]).run(spec_of(cell_text("outputs any")))
    assert "topology" in after(cell_text("outputs any")).properties


def test_stretchable_example_has_the_papers_row_sizes():
    # N = 6 states: c_k2, c_k1 feed n0..n3 (2^4 codes each), n0 -> 2^3, n1 -> 2^2, n2 -> 2^1, n3 none.
    spec = PassManager([MixedOps(), ZeroOps(), Topology()], verify=True).apply(load(EXAMPLES / "stretchable.cell"))
    for c in spec.cells:
        assert [(r.node, len(r.codes)) for r in c.beta_rows] == [
            ("c_k2", 16),
            ("c_k1", 16),
            ("n0", 8),
            ("n1", 4),
            ("n2", 2),
        ]
        assert sum(len(r) for r in c.alpha_rows) == 14 * 7
