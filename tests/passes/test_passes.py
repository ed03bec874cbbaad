"""Passes as TVM writes their tests: before spec -> run pass -> equal to the expected spec."""

from __future__ import annotations

import itertools
import random

import pytest
from helpers import DARTS_CELLS, EXAMPLES, spec_of

from nasir.api import load
from nasir.ops import DARTS_OPS
from nasir.passes.dead_nodes import DeadNodes
from nasir.passes.derive import Derive
from nasir.passes.mixed_ops import MixedOps
from nasir.passes.zero_ops import ZeroOps
from nasir.pipeline import PassManager

SPACE = DARTS_CELLS


def searched(text=SPACE):
    return PassManager([MixedOps(), ZeroOps()], verify=True).apply(spec_of(text))


def test_mixed_ops_gives_each_choice_edge_its_alpha_row_shared_per_cell_kind():
    spec = searched()
    for c in spec.cells:
        assert [e.alpha for e in c.edges] == list(range(14))
        assert c.alpha_rows == (DARTS_OPS,) * 14
    # The DARTS supernet's 224 architecture variables: 2 kinds x 14 edges x 8 ops.
    assert sum(len(r) for c in spec.cells for r in c.alpha_rows) == 224


def test_mixed_ops_leaves_fixed_edges_and_derived_specs_alone():
    spec = load(EXAMPLES / "darts_v2.cell")
    result = MixedOps().run(spec)
    assert not result.modified and result.spec == spec


def test_zero_ops_drops_none_from_computation_only():
    spec = searched()
    e = spec.cell("normal").edges[0]
    assert e.candidates == DARTS_OPS and e.computed == DARTS_OPS[1:]
    assert "zero_ops" in spec.properties


def test_zero_ops_requires_mixed_ops():
    with pytest.raises(RuntimeError, match="requires"):
        PassManager([ZeroOps()]).run(spec_of(SPACE))


def test_dump_after_prints_the_ir_after_that_pass():
    dumps = []
    PassManager([MixedOps(), ZeroOps()], dump_after="mixed_ops", dump=dumps.append).run(spec_of(SPACE))
    assert len(dumps) == 1 and "# alpha: 14 rows x 8 ops, shared by every 'normal' cell" in dumps[0]


def test_dead_nodes_removes_unfed_and_unconsumed_nodes_to_a_fixed_point():
    from nasir.frontend import parse_text  # the verifier rightly rejects the "before" cell: parse only

    before = parse_text("""
cell c {
  inputs a, b
  nodes n0..n5
  edges a -> n0 : skip_connect
  edges n0 -> n1 : sep_conv_3x3
  edges n2 -> n1 : skip_connect
  edges b -> n3 : sep_conv_3x3
  edges b -> n4 : sep_conv_3x3
  edges n4 -> n5 : sep_conv_3x3
  output concat(n0, n3)
}
""")
    # n1 is consumed by nothing, n2 fed by nothing; n5 is consumed by nothing and, once it is gone,
    # neither is n4 (the fixed point needs a second round).
    expected = spec_of("""
cell c {
  inputs a, b
  nodes n0, n3
  edges a -> n0 : skip_connect
  edges b -> n3 : sep_conv_3x3
  output concat(n0, n3)
}
""")
    result = DeadNodes().run(before)
    assert result.modified and result.spec.cell("c") == expected.cell("c")
    assert not DeadNodes().run(expected).modified


GENOTYPE_NORMAL = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                   ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]  # fmt: skip
GENOTYPE_REDUCE = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                   ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]  # fmt: skip


def scores_for(spec, genotype, seed):
    """Scores where the genotype's ops win: 0.5 + 0.1 * (descending rank) on its edges, noise < 0.3 elsewhere."""
    rng = random.Random(seed)
    c = spec.cell("normal")
    states = c.states
    rows = [[rng.uniform(0, 0.3) for _ in DARTS_OPS] for _ in c.edges]
    for k in range(4):
        for rank, (op, i) in enumerate(genotype[2 * k : 2 * k + 2]):
            e = next(e for e in c.edges if e.dst == f"n{k}" and e.src == states[i])
            rows[e.alpha][DARTS_OPS.index(op)] = 0.9 - 0.1 * rank
    return rows


def test_derive_recovers_darts_v2_from_scores_that_favour_it():
    spec = searched()
    scores = {"normal": scores_for(spec, GENOTYPE_NORMAL, 0), "reduce": scores_for(spec, GENOTYPE_REDUCE, 1)}
    derived = Derive(scores).run(spec).spec
    v2 = load(EXAMPLES / "darts_v2.cell")
    assert derived.cell("normal") == v2.cell("normal")
    assert derived.cell("reduce") == v2.cell("reduce")
    assert derived.search is None and not derived.is_search_space


def test_derive_top_k_equals_brute_force_best_subset():
    spec = searched()
    rng = random.Random(7)
    for trial in range(20):
        rows = [[rng.random() for _ in DARTS_OPS] for _ in range(14)]
        derived = Derive({"normal": rows, "reduce": rows}).run(spec).spec
        c = spec.cell("normal")
        for n in c.node_names:
            edges = c.in_edges(n)
            best = {e: max(s for op, s in zip(DARTS_OPS, rows[e.alpha]) if op != "none") for e in edges}
            # Brute force: the pair of input edges with the largest total score.
            pair = max(itertools.combinations(edges, 2), key=lambda p: best[p[0]] + best[p[1]])
            got = {(e.src, e.op) for e in derived.cell("normal").in_edges(n)}
            want = {(e.src, max((s, op) for op, s in zip(DARTS_OPS, rows[e.alpha]) if op != "none")[1]) for e in pair}
            assert got == want, (trial, n)


def test_none_is_never_selected_even_when_it_scores_highest():
    spec = searched()
    rows = [[1.0] + [0.1 * j for j in range(1, 8)] for _ in range(14)]
    derived = Derive({"normal": rows, "reduce": rows}).run(spec).spec
    assert {e.op for c in derived.cells for e in c.edges} == {"dil_conv_5x5"}


def test_limit_keeps_the_best_skip_connections_and_moves_the_rest_to_their_next_best():
    spec = searched(SPACE + "search {\n  limit skip_connect <= 2 per cell\n}\n")
    skip, sep = DARTS_OPS.index("skip_connect"), DARTS_OPS.index("sep_conv_3x3")
    rows = []
    for k in range(14):
        r = [0.0] * 8
        r[skip] = 0.9 - 0.01 * k  # skip wins everywhere, earlier edges more strongly
        r[sep] = 0.5
        rows.append(r)
    derived = Derive({"normal": rows, "reduce": rows}).run(spec).spec
    n = derived.cell("normal")
    skips = [(e.src, e.dst) for e in n.edges if e.op == "skip_connect"]
    # Kept per node: the two earliest edges (highest skip score). Of the 8 kept, the 2 best overall
    # (edges 0 and 1, both into n0) keep skip_connect; the others fall back to sep_conv_3x3.
    assert skips == [("c_k2", "n0"), ("c_k1", "n0")]
    assert sum(e.op == "sep_conv_3x3" for e in n.edges) == 6


def test_budget_moves_lowest_scoring_parametric_ops_to_parameter_free_until_it_fits():
    spec = searched(SPACE + "search {\n  budget params <= 3\n}\n")
    rows = [[0.0, 0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6] for _ in range(14)]

    def cost(s):  # an independent toy cost: number of parametric ops in the normal cell
        return {"params": sum(e.op not in ("max_pool_3x3", "avg_pool_3x3", "skip_connect") for e in s.cell("normal").edges)}

    derived = Derive({"normal": rows, "reduce": rows}, cost=cost).run(spec).spec
    ops_ = [e.op for e in derived.cell("normal").edges]
    assert sum(o == "sep_conv_3x3" for o in ops_) == 3 and ops_.count("skip_connect") == 5


def test_budget_never_breaks_a_limit_and_says_when_both_cannot_hold():
    """Issue 14, item 4: skip_connect is the best parameter-free candidate everywhere, but `limit
    skip_connect <= 0`: the budget must move ops to the pools instead (before: 5 skip_connects)."""
    rows = [[0.0, 0.2, 0.1, 0.3, 0.9, 0.8, 0.7, 0.6] for _ in range(14)]  # skip > max_pool > avg_pool

    def cost(s):  # an independent toy cost: number of parametric ops in the normal cell
        return {"params": sum(e.op not in ("max_pool_3x3", "avg_pool_3x3", "skip_connect") for e in s.cell("normal").edges)}

    spec = searched(SPACE + "search {\n  limit skip_connect <= 0 per cell\n  budget params <= 3\n}\n")
    derived = Derive({"normal": rows, "reduce": rows}, cost=cost).run(spec).spec
    ops_ = [e.op for e in derived.cell("normal").edges]
    assert ops_.count("skip_connect") == 0 and sum(o == "sep_conv_3x3" for o in ops_) == 3
    assert ops_.count("max_pool_3x3") == 5  # the best candidate the limit leaves
    # with the pools limited too, nothing parameter-free is left: the budget says it cannot be met, and why
    tight = SPACE + "search {\n  limit skip_connect <= 0 per cell\n  limit max_pool_3x3 <= 1 per cell\n" \
                    "  limit avg_pool_3x3 <= 1 per cell\n  budget params <= 3\n}\n"  # fmt: skip
    from nasir.diagnostics import DiagnosticError

    with pytest.raises(DiagnosticError, match=r"budget cannot be met under limit skip_connect <= 0, limit max_pool_3x3 <= 1"):
        Derive({"normal": rows, "reduce": rows}, cost=cost).run(searched(tight))
