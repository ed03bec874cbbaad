"""nasir/search/topology.py against brute-force enumeration and hand-computed values (stretchable-cells)."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from helpers import spec_of
from hypothesis import given, settings
from hypothesis import strategies as st

from nasir.passes.derive import Derive
from nasir.passes.mixed_ops import MixedOps
from nasir.passes.topology import Topology
from nasir.pipeline import PassManager
from nasir.search.topology import beta_sizes, merged_factors, most_likely_codes, most_likely_edges, passive_aggressive

OPS = "opset darts = {none, max_pool_3x3, skip_connect, sep_conv_3x3}\n"


@functools.cache
def cell(topology: str, nodes: int = 3):
    last = f"n{nodes - 1}"
    text = (
        OPS
        + f"""
cell c {{
  inputs a, b
  nodes n0..{last}
  edges * -> n* : choice(darts)
  topology {topology}
  output concat(n0..{last})
}}
"""
    )
    return PassManager([MixedOps(), Topology()], verify=True).apply(spec_of(text))


def softmax(xs: list[float]) -> list[float]:
    if not xs:
        return []
    m = max(xs)
    ex = [math.exp(x - m) for x in xs]
    return [v / sum(ex) for v in ex]


def successors(c, node: str) -> int:
    return len({e.dst for e in c.edges if e.is_choice and e.src == node})


def brute_force_factors(c, betas: list[list[float]]) -> list[float]:
    """Expected usage of every edge over the joint distribution of all rows' codes, times the paper's scale."""
    kind = c.topology.kind
    rows = c.beta_rows
    probs = [softmax(b) for b in betas]
    usage = [0.0] * len(c.edges)
    # A node without a row (outputs 2, one successor: C(1, 2) = 0 codes) picks no output edge.
    for combo in itertools.product(*(range(len(r.codes)) for r in rows)):
        p = math.prod(probs[r][k] for r, k in enumerate(combo))
        chosen = {rows[r].node: set(rows[r].codes[k]) for r, k in enumerate(combo)}
        for k, e in enumerate(c.edges):
            exists = e.src in chosen.get(e.dst, ()) if kind == "inputs" else e.dst in chosen.get(e.src, ())
            usage[k] += p * exists
    out = []
    for k, e in enumerate(c.edges):
        n = successors(c, e.src)
        if kind == "inputs":
            scale = 1.0  # Eq. 6
        elif kind == "outputs":
            scale = math.comb(n, 2) / math.comb(n - 1, 1) if n >= 2 else 0.0  # Eq. 10; one successor: no code
        else:
            scale = (2**n - 1) / 2 ** (n - 1)  # Eq. 13
        out.append(scale * usage[k])
    return out


def draw_betas(data, c) -> list[list[float]]:
    x = st.floats(-4, 4, allow_nan=False)
    return [data.draw(st.lists(x, min_size=n, max_size=n)) for n in beta_sizes(c)]


def factors(c, betas) -> list[float]:
    return merged_factors(c, [torch.tensor(b, dtype=torch.float64) for b in betas]).tolist()


@pytest.mark.parametrize("topology", ["inputs 2", "outputs 2", "outputs any"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_merged_factor_matches_joint_enumeration(topology, data):
    c = cell(topology).cell("c")
    betas = draw_betas(data, c)
    assert factors(c, betas) == pytest.approx(brute_force_factors(c, betas), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("topology", ["outputs 2", "outputs any"])
def test_merged_factor_matches_joint_enumeration_on_the_darts_sized_cell(topology):
    # 2 inputs + 4 nodes, as examples/stretchable.cell: 16 * 16 * 8 * 4 * 2 joint codes under `outputs any`.
    c = cell(topology, nodes=4).cell("c")
    g = torch.Generator().manual_seed(5)
    betas = [(2 * torch.randn(n, generator=g, dtype=torch.float64)).tolist() for n in beta_sizes(c)]
    assert factors(c, betas) == pytest.approx(brute_force_factors(c, betas), rel=1e-9, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_input_pairs_node_equals_eq4_sum_over_pairs(data):
    # Eq. 4 literally: x_j = sum over pairs (m, n) of p_j^(m,n) * (o^{m,j} + o^{n,j}), with scalar edge outputs.
    c = cell("inputs 2", nodes=4).cell("c")
    betas = draw_betas(data, c)
    o = {(e.src, e.dst): data.draw(st.floats(-3, 3, allow_nan=False)) for e in c.edges}
    s = factors(c, betas)
    for row, b in zip(c.beta_rows, betas):
        j = row.node
        eq4 = sum(p * (o[(m, j)] + o[(n, j)]) for p, (m, n) in zip(softmax(b), row.codes))
        eq6 = sum(s[k] * o[(e.src, e.dst)] for k, e in enumerate(c.edges) if e.dst == j)
        assert eq6 == pytest.approx(eq4, rel=1e-9, abs=1e-12)


def test_uniform_beta_gives_the_hand_values_of_each_normalisation():
    zeros = lambda c: [torch.zeros(n, dtype=torch.float64) for n in beta_sizes(c)]  # noqa: E731
    by_src = lambda c, s: {e.src: v for e, v in zip(c.edges, s.tolist())}  # noqa: E731
    # Output pairs, Eq. 10: C(n,2)/C(n-1,1) * (n-1)/C(n,2) = 1 on every edge; the one edge of the node with a
    # single successor (n1 -> n2, C(1, 2) = 0 codes) never exists: 0.
    c = cell("outputs 2").cell("c")
    want = [0.0 if e.src == "n1" else 1.0 for e in c.edges]
    assert want.count(0.0) == 1 and merged_factors(c, zeros(c)).tolist() == pytest.approx(want)
    # Any outputs, Eq. 13 as printed, with the empty code among the 2^n codes: 1 - 2^-n.
    c = cell("outputs any").cell("c")
    s = by_src(c, merged_factors(c, zeros(c)))
    assert (s["a"], s["b"], s["n0"], s["n1"]) == pytest.approx((7 / 8, 7 / 8, 3 / 4, 1 / 2))
    # Input pairs, Eq. 6 (no scale): each of n predecessors is in n-1 of C(n,2) pairs: 2/n.
    c = cell("inputs 2").cell("c")
    s = merged_factors(c, zeros(c))
    want = [1.0 if e.dst == "n0" else 2 / 3 if e.dst == "n1" else 1 / 2 for e in c.edges]
    assert s.tolist() == pytest.approx(want)


@pytest.mark.parametrize("topology", ["inputs 2", "outputs 2", "outputs any"])
def test_merged_factor_gradients_flow_and_match_finite_differences(topology):
    c = cell(topology).cell("c")
    sizes = beta_sizes(c)
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(sum(sizes), dtype=torch.float64, generator=g, requires_grad=True)
    weights = torch.randn(len(c.edges), dtype=torch.float64, generator=g)

    def f(x):
        return (merged_factors(c, list(torch.split(x, sizes))) * weights).sum()

    assert torch.autograd.gradcheck(f, (flat,))
    f(flat).backward()
    rows_with_choice = [k for k, n in enumerate(sizes) if n > 1]
    grads = torch.split(flat.grad, sizes)
    assert all(grads[k].abs().sum() > 0 for k in rows_with_choice)


def probs_to_betas(ps: list[list[float]]) -> list[torch.Tensor]:
    return [torch.tensor(p, dtype=torch.float64).log().requires_grad_() for p in ps]  # softmax(log p) = p


def small_any():
    # a, b -> n0, n1; n0 -> n1. Rows: a, b: (), (n0), (n1), (n0, n1); n0: (), (n1).
    return PassManager([MixedOps(), Topology()]).apply(spec_of(OPS + """
cell c {
  inputs a, b
  nodes n0, n1
  edges * -> n* : choice(darts)
  topology outputs any
  output concat(n0, n1)
}
""")).cell("c")  # fmt: skip


def test_passive_aggressive_is_zero_when_every_node_keeps_an_input():
    c = small_any()
    # a's most likely code feeds both nodes; b and n0 prefer to feed nothing.
    betas = probs_to_betas([[0.1, 0.1, 0.1, 0.7], [0.7, 0.1, 0.1, 0.1], [0.9, 0.1]])
    assert passive_aggressive(c, betas).item() == 0.0


def test_passive_aggressive_hand_value_when_nodes_lose_their_inputs():
    c = small_any()
    betas = probs_to_betas([[0.4, 0.1, 0.3, 0.2], [0.5, 0.25, 0.15, 0.1], [0.8, 0.2]])
    # n0: (1 - 0.2/0.4) * (1 - 0.25/0.5) = 0.25
    # n1: (1 - 0.3/0.4) * (1 - 0.15/0.5) * (1 - 0.2/0.8) = 0.25 * 0.7 * 0.75 = 0.13125
    r = passive_aggressive(c, betas)
    assert r.item() == pytest.approx(0.25 + 0.13125, rel=1e-12)
    r.backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in betas)


def test_passive_aggressive_is_zero_under_input_pairs():
    c = cell("inputs 2").cell("c")
    betas = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in beta_sizes(c)]
    assert passive_aggressive(c, betas).item() == 0.0


def one_hot_betas(c, choice: dict[str, tuple[str, ...]]) -> list[torch.Tensor]:
    out = []
    for r in c.beta_rows:
        b = torch.zeros(len(r.codes))
        if r.codes:
            b[r.codes.index(choice[r.node])] = 5.0
        out.append(b)
    return out


def test_most_likely_edges_inputs_pairs_keep_each_nodes_best_pair():
    c = cell("inputs 2").cell("c")
    betas = one_hot_betas(c, {"n0": ("a", "b"), "n1": ("b", "n0"), "n2": ("a", "n1")})
    assert most_likely_edges(c, betas) == {
        ("a", "n0"),
        ("b", "n0"),
        ("b", "n1"),
        ("n0", "n1"),
        ("a", "n2"),
        ("n1", "n2"),
    }


def test_most_likely_edges_output_pairs_follow_the_sources():
    c = cell("outputs 2").cell("c")
    betas = one_hot_betas(c, {"a": ("n0", "n2"), "b": ("n0", "n1"), "n0": ("n1", "n2")})
    # n1 has one successor and no code (C(1, 2) = 0): n1 -> n2 never exists; 3 deciding states x 2 edges.
    assert most_likely_edges(c, betas) == {
        ("a", "n0"),
        ("a", "n2"),
        ("b", "n0"),
        ("b", "n1"),
        ("n0", "n1"),
        ("n0", "n2"),
    }


def test_most_likely_code_ties_pick_the_first_code_as_argmax_does():
    c = small_any()
    assert most_likely_codes(c, [torch.zeros(4), torch.zeros(4), torch.zeros(2)]) == {"a": (), "b": (), "n0": ()}


def test_derived_stretchable_cell_has_nodes_with_one_three_and_no_inputs():
    spec = cell("outputs any", nodes=4)
    c = spec.cell("c")
    # Nobody feeds n2: it loses every input and dead-node elimination removes it (and n2 -> n3).
    betas = one_hot_betas(c, {"a": ("n0", "n1", "n3"), "b": ("n0",), "n0": ("n3",), "n1": ("n3",), "n2": ("n3",)})
    keep = most_likely_edges(c, betas)
    assert keep == {("a", "n0"), ("a", "n1"), ("a", "n3"), ("b", "n0"), ("n0", "n3"), ("n1", "n3"), ("n2", "n3")}
    assert passive_aggressive(c, betas).item() > 0  # n2 has no likely input
    sep = c.alpha_rows[0].index("sep_conv_3x3")
    scores = [[1.0 if k == sep else 0.0 for k in range(len(r))] for r in c.alpha_rows]
    derived = Derive({"c": scores}, keep_edges={"c": keep}).run(spec).spec.cell("c")
    assert derived.node_names == ("n0", "n1", "n3")
    assert [(e.src, e.dst, e.op) for e in derived.edges] == [
        ("a", "n0", "sep_conv_3x3"), ("b", "n0", "sep_conv_3x3"),  # 2 inputs
        ("a", "n1", "sep_conv_3x3"),  # 1 input
        ("a", "n3", "sep_conv_3x3"), ("n0", "n3", "sep_conv_3x3"), ("n1", "n3", "sep_conv_3x3"),  # 3 inputs
    ]  # fmt: skip
    assert derived.output.nodes == ("n0", "n1", "n3")


def test_betas_of_the_wrong_shape_are_rejected():
    c = small_any()
    with pytest.raises(ValueError, match="sizes"):
        merged_factors(c, [torch.zeros(4), torch.zeros(3), torch.zeros(2)])
