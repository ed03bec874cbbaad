"""`nasir info`: published parameter and MAC figures, SDARTS depth/width, search-space sizes by brute force."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from helpers import EXAMPLES, spec_of

from nasir import analysis, measure
from nasir.api import load
from nasir.genotype import genotype_to_spec_text, parse_genotype
from nasir.ops import REGISTRY


def spec_from_genotype(text: str, macro: str | None = None):
    return load(genotype_to_spec_text(parse_genotype(text), macro=macro), name="imported.cell")


# ---- published figures ---------------------------------------------------------------------------------


def test_darts_v2_cifar_has_3349342_params_without_aux_and_528359040_macs():
    d = measure.info(EXAMPLES / "darts_v2.cell")
    assert d["params_no_aux"] == 3_349_342 == d["params"]  # auxiliary = false by default
    assert d["macs"] == 528_359_040


def test_darts_v2_imagenet_has_4718752_params_without_aux():
    d = measure.info(EXAMPLES / "darts_v2_imagenet.cell", overrides=["auxiliary=true"])
    assert d["params_no_aux"] == 4_718_752
    # ImageNet auxiliary head on 768 channels: conv 1x1 768->128 + BN + conv 2x2 128->768 (no BN) + linear 768->1000.
    assert d["params"] - d["params_no_aux"] == 768 * 128 + 2 * 128 + 128 * 768 * 4 + 768 * 1000 + 1000


def test_auxiliary_head_counts_in_the_total_only():
    d = measure.info(EXAMPLES / "darts_v2.cell", overrides=["auxiliary=true"])
    assert d["params_no_aux"] == 3_349_342
    # CIFAR auxiliary head on the 576 channels after cell 13: 576*128 + 2*128 + 128*768*4 + 2*768 + 768*10 + 10.
    assert d["params"] - d["params_no_aux"] == 476_426


def test_nb201_network_with_all_conv3x3_edges_has_1531546_params():
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert measure.info(spec_from_genotype(arch))["params"] == 1_531_546


def test_macs_follow_the_conv_rule_on_a_hand_countable_network():
    spec = spec_of("""
        cell c {
          inputs x
          n1 = nor_conv_3x3(x)
          output n1
        }
        network n(C = 4) {
          input (3, 8, 8)
          stem  conv3x3(C), bn
          stack 1 cells(C): c
          head  global_avg_pool, linear(5)
        }
    """)
    stem = 4 * 8 * 8 * 3 * 9
    cell = 4 * 8 * 8 * 4 * 9
    assert measure.info(spec)["macs"] == stem + cell + 4 * 5


# ---- depth and width (SDARTS appendix 7.4, section 5) -----------------------------------------------------


def test_darts_v2_normal_cell_has_depth_3_and_width_3_5c():
    cells = {c["name"]: c for c in measure.info(EXAMPLES / "darts_v2.cell")["cells"]}
    assert (cells["normal"]["depth"], cells["normal"]["width"]) == (3, 3.5)
    # reduce: n0 reads only inputs (1c); n1, n2, n3 read one input and n0 (0.5c each); c_k2 -> n0 -> n1 -> output.
    assert (cells["reduce"]["depth"], cells["reduce"]["width"]) == (3, 2.5)
    assert cells["normal"]["width_text"] == "3.5c"


def test_pc_darts_normal_cell_has_depth_2_and_width_4c():
    # PC-DARTS' CIFAR genotype (genotypes.py of the PC-DARTS repository); SDARTS section 5: width 4c, depth 2.
    pc_darts = """Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1),
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6),
        reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0),
        ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))"""
    normal = load(genotype_to_spec_text(parse_genotype(pc_darts)), name="pc.cell").cell("normal")
    assert analysis.cell_depth(normal) == 2 and analysis.cell_width(normal) == 4


def test_none_edges_are_not_connections():
    # A chain x -> n1 -> n2 -> n3; the other edges carry `none`. Output node n3: depth 3; only n1 touches the input.
    spec = spec_from_genotype("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_3x3~2|")
    cell = spec.cell("nbcell")
    assert analysis.cell_depth(cell) == 3 and analysis.cell_width(cell) == 1


def test_nb201_cell_with_every_edge_has_depth_3_and_width_11_6c():
    cell = spec_from_genotype("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|").cell("nbcell")
    assert analysis.cell_depth(cell) == 3
    assert analysis.cell_width(cell) == 1 + analysis.Fraction(1, 2) + analysis.Fraction(1, 3)


# ---- search spaces ---------------------------------------------------------------------------------------

OPS3 = ("none", "skip_connect", "sep_conv_3x3")


def small_space(rule: str = "") -> str:
    return f"""
        cell c {{
          inputs a, b
          nodes n0, n1, n2
          edges * -> n* : choice({{{", ".join(OPS3)}}})
          output concat(n0, n1, n2)
          {rule}
        }}
    """


def brute_force(cell, rule) -> int:
    """Enumerate every assignment of (absent | op) to every edge and count those the rule admits."""
    edges = [(e.src, e.dst) for e in cell.edges]
    real = [o for o in OPS3 if not REGISTRY[o].is_zero]
    count = 0
    for assign in itertools.product([None, *real], repeat=len(edges)):
        present = {edges[i] for i, a in enumerate(assign) if a is not None}
        if rule(present):
            count += 1
    return count


@pytest.mark.parametrize("k", [1, 2])
def test_keep_k_candidates_match_brute_force_enumeration(k):
    cell = spec_of(small_space(f"keep {k} inputs per node")).cell("c")
    nodes = cell.node_names

    def rule(present):  # every node keeps exactly k input edges, each with a real op
        return all(sum(d == n for _, d in present) == k for n in nodes)

    assert analysis.candidates(cell) == brute_force(cell, rule)
    # ... and the closed form C(#preds, k) * (#ops - none)^k per node: preds 2, 3, 4.
    assert analysis.candidates(cell) == math.prod(math.comb(p, k) * 2**k for p in (2, 3, 4))


def test_without_keep_every_edge_takes_the_argmax_of_all_its_ops_none_included():
    # Without a keep rule derivation (passes/derive.py) takes the argmax over all ops of each of the 9
    # edges, 'none' included (the NAS-Bench-201 derivation): 3 choices per edge.
    cell = spec_of(small_space()).cell("c")
    count = sum(1 for _ in itertools.product(OPS3, repeat=len(cell.edges)))
    assert analysis.candidates(cell) == count == 3**9


def test_nb201_space_derives_15625_cells_30_variables_6_mixed_edges():
    # NAS-Bench-201 lists 5**6 = 15,625 cells; 'none' on an edge is one of them, and the NB201 derivation
    # (argmax over all ops, no keep rule) can pick it.
    d = measure.info(EXAMPLES / "nb201.cell")
    assert d["space"]["candidates"] == 15_625 == len(list(itertools.product(range(5), repeat=6)))
    assert d["space"]["mixed_edges"] == 6 and d["space"]["architecture_variables"] == 30
    assert d["params"] is None and d["cells"][0]["depth"] is None


def test_darts_space_sizes():
    d = measure.info(EXAMPLES / "darts.cell")
    s = d["space"]
    assert s["mixed_edges"] == 28 and s["architecture_variables"] == 2 * 14 * 8
    per_cell = math.prod(math.comb(p, 2) * 7**2 for p in (2, 3, 4, 5))
    assert s["candidates"] == per_cell**2
    # The DARTS reference logs "param size = 1.930618MB" for this supernet (train_search.py, C = 16, 8 layers).
    assert s["supernet_weight_params"] == 1_930_618


@pytest.mark.parametrize("topology", ["inputs 2", "outputs 1", "outputs 2", "outputs any"])
def test_topology_candidates_match_brute_force_enumeration(topology):
    cell = spec_of(small_space(f"topology {topology}").replace("none, ", "")).cell("c")
    kind, k = topology.split()
    nodes, states = cell.node_names, cell.states

    def rule(present):
        if not all(any(d == n for _, d in present) for n in nodes):
            return False  # a node without inputs: invalid topology
        if kind == "inputs":
            return all(sum(d == n for _, d in present) == min(int(k), sum(e.dst == n for e in cell.edges)) for n in nodes)
        for s in states:
            succ = sum(e.src == s for e in cell.edges)
            chosen = sum(src == s for src, _ in present)
            # outputs k: exactly k output edges; a state with fewer than k successors has none (C(n, k) = 0)
            if k != "any" and succ and chosen != (int(k) if succ >= int(k) else 0):
                return False
        return True

    assert analysis.candidates(cell) == brute_force(cell, rule) > 0


def test_info_is_json_and_renders_the_figures():
    d = measure.info(EXAMPLES / "darts_v2.cell")
    assert json.loads(json.dumps(d)) == d
    text = analysis.render(d)
    assert "3,349,342" in text and "528,359,040" in text and "depth 3, width 3.5c" in text
    space = analysis.render(measure.info(EXAMPLES / "nb201.cell"))
    assert "candidate architectures  15,625" in space and "mixed edges              6" in space


# ---- what derivation can produce: brute force over selections, checked against passes/derive.py ------------------
MIXED_FIXED = """
    opset three = {none, skip_connect, sep_conv_3x3, max_pool_3x3}
    cell c {
      inputs a, b
      nodes n0, n1, n2
      edges * -> n* : choice(three)
      edges a -> n1 : avg_pool_3x3
      edges b -> n2 : skip_connect
      output concat(n0, n1, n2)
      RULE
    }
    search {
      LIMITS
    }
"""


def derivable(cell, limits) -> set:
    """Every derived cell the selection rule of passes/derive.py admits, enumerated: per node the fixed
    edges plus min(k, #mixed) mixed edges, each with one op other than none; without keep every mixed
    edge with any op, none included (the NB201 argmax); at most n uses of a limited op among the kept
    mixed edges."""
    caps = {lim.op: lim.max for lim in limits}
    per_node = []
    for n in cell.node_names:
        mixed = [e for e in cell.in_edges(n) if e.is_choice]
        fixed = frozenset((e.src, e.dst, e.op, "fixed") for e in cell.in_edges(n) if not e.is_choice)
        k = len(mixed) if cell.keep is None else min(cell.keep, len(mixed))
        options = []
        for subset in itertools.combinations(mixed, k):
            for ops_ in itertools.product(*[[o for o in e.candidates if o != "none" or cell.keep is None] for e in subset]):
                options.append(fixed | frozenset((e.src, e.dst, o, "mixed") for e, o in zip(subset, ops_)))
        per_node.append(options)
    out = set()
    for combo in itertools.product(*per_node):
        cell_edges = frozenset().union(*combo)
        used = [o for _, _, o, kind in cell_edges if kind == "mixed"]
        if all(used.count(op) <= cap for op, cap in caps.items()):
            out.add(cell_edges)
    return out


@pytest.mark.parametrize("rule, limits", [
    ("", ""), ("keep 1 inputs per node", ""), ("keep 2 inputs per node", ""),
    ("keep 2 inputs per node", "limit skip_connect <= 1 per cell"),
    ("keep 1 inputs per node", "limit skip_connect <= 0 per cell\n      limit max_pool_3x3 <= 1 per cell"),
    ("", "limit sep_conv_3x3 <= 2 per cell"),
])  # fmt: skip
def test_candidates_of_cells_mixing_fixed_and_searchable_edges_match_brute_force(rule, limits):
    import random

    from nasir.passes.derive import Pick, apply_limits, select
    from nasir.passes.mixed_ops import MixedOps

    spec = spec_of(MIXED_FIXED.replace("RULE", rule).replace("LIMITS", limits or "epochs 1"))
    cell = spec.cell("c")
    lims = spec.search.limits
    expected = derivable(cell, lims)
    assert analysis.candidates(cell, lims) == len(expected) > 0
    # The enumeration is what derivation does: random scores through passes/derive.py land inside it.
    lowered = MixedOps().run(spec).spec.cell("c")
    rng = random.Random(0)
    for _ in range(200):
        scores = [[rng.random() for _ in row] for row in lowered.alpha_rows]
        sel = select(lowered, scores)
        picks = iter(apply_limits([x for x in sel if isinstance(x, Pick)], lims))
        chosen = [x if not isinstance(x, Pick) else next(picks) for x in sel]
        derived = frozenset((x.edge.src, x.edge.dst, x.op, "mixed") if isinstance(x, Pick) else (x.src, x.dst, x.op, "fixed")
                            for x in chosen)  # fmt: skip
        assert derived in expected


def test_info_counts_respect_limits():
    text = MIXED_FIXED.replace("RULE", "keep 2 inputs per node")
    free = analysis.candidates(spec_of(text.replace("LIMITS", "epochs 1")).cell("c"))
    spec = spec_of(text.replace("LIMITS", "limit skip_connect <= 0 per cell"))
    assert analysis.candidates(spec.cell("c"), spec.search.limits) < free
    # no skip_connect on a kept mixed edge: 2 real ops per edge; n0 keeps 2 of 2, n1 2 of 3, n2 2 of 4
    assert analysis.candidates(spec.cell("c"), spec.search.limits) == 2**2 * 3 * 2**2 * 6 * 2**2


def test_huge_candidate_counts_render_and_print_as_json():
    import json

    from nasir.cli import _json_safe

    n = 7**10_000  # 8,451 digits: more than Python prints as an int, far past float
    x = 10_000 * math.log10(7)  # 8450.98...: n = 10**0.98... * 10**8450
    mantissa = 10 ** (x - math.floor(x))
    assert analysis._count(n) == f"about {mantissa:.2f}e+{math.floor(x)}" == "about 9.56e+8450"
    assert analysis._count(15_625) == "15,625" and analysis._count(123_456_789) == "123,456,789 (about 1.23e+8)"
    text = json.dumps(_json_safe({"space": {"candidates": n, "mixed_edges": 3}, "flag": True}))
    assert json.loads(text) == {"space": {"candidates": "9.558729e+8450", "mixed_edges": 3}, "flag": True}


@pytest.mark.parametrize("topology", ["inputs 1", "inputs 2", "outputs 1", "outputs any"])
def test_topology_candidates_respect_limits_by_brute_force(topology):
    spec = spec_of(small_space(f"topology {topology}").replace("none, ", "") + "\nsearch {\n  limit skip_connect <= 1 per cell\n}\n")
    cell = spec.cell("c")
    kind, k = topology.split()
    edges = [(e.src, e.dst) for e in cell.edges]
    count = 0
    for assign in itertools.product([None, "skip_connect", "sep_conv_3x3"], repeat=len(edges)):
        present = [edges[i] for i, a in enumerate(assign) if a is not None]
        if assign.count("skip_connect") > 1 or not all(any(d == n for _, d in present) for n in cell.node_names):
            continue
        if kind == "inputs":
            ok = all(sum(d == n for _, d in present) == min(int(k), sum(e.dst == n for e in cell.edges)) for n in cell.node_names)
        else:
            ok = all(k == "any" or sum(s == x for s, _ in present) == min(int(k), sum(e.src == x for e in cell.edges))
                     for x in cell.states if any(e.src == x for e in cell.edges))  # fmt: skip
        count += ok
    assert analysis.candidates(cell, spec.search.limits) == count > 0
    assert analysis.candidates(cell, spec.search.limits) < analysis.candidates(cell)


@pytest.mark.parametrize("topology", ["inputs 1", "inputs 2", "outputs 2", "outputs any"])
def test_topology_codes_are_counted_without_listing_them(topology):
    from nasir.frontend import topology_codes
    from nasir.passes.topology import beta_rows

    cell = spec_of(small_space(f"topology {topology}").replace("none, ", "")).cell("c")
    assert topology_codes(cell.topology, list(cell.edges)) == sum(len(r.codes) for r in beta_rows(cell))


def test_a_topology_with_too_many_codes_is_refused_at_check():
    from helpers import errors_of

    from nasir import limits

    n = 13  # c_k2 reaches all 13 nodes: 2**13 codes for it alone
    text = f"""
        cell c {{
          inputs a, b
          nodes n0..n{n - 1}
          edges * -> n* : choice({{skip_connect, sep_conv_3x3}})
          output concat(n0..n{n - 1})
          topology outputs any
        }}
    """
    # a deciding node per state with successors: a and b reach all n nodes, node k the n - 1 - k after it
    expected = 2 * 2**n + sum(2 ** (n - 1 - k) for k in range(n - 1))
    assert expected > limits.MAX_TOPOLOGY_CODES
    assert errors_of(text) == [(6, 3, f"this topology has {expected:,} codes (topology variables); a cell has at most {limits.MAX_TOPOLOGY_CODES:,}")]


def test_outputs_topologies_past_the_enumeration_bound_are_reported_as_not_counted(monkeypatch):
    monkeypatch.setattr(analysis, "MAX_ENUMERATED_TOPOLOGIES", 10)
    cell = spec_of(small_space("topology outputs 1").replace("none, ", "")).cell("c")
    # rows: a and b pick 1 of 3 nodes, n0 1 of 2, n1 1 of 1: 3 * 3 * 2 * 1 = 18 combinations > 10
    assert analysis.candidates(cell) is None
    assert analysis._count(None) == "not counted (more than 10 topologies to enumerate)"


def test_info_input_is_rendered_and_refused_for_a_search_space(capsys):
    from nasir.cli import main

    assert main(["info", str(EXAMPLES / "darts_v2.cell"), "--set", "C=8", "--set", "layers=2", "--input", "3,64,48"]) == 0
    out = capsys.readouterr().out
    assert "at 3x64x48: MACs " in out and "FLOPs (2 x MACs)" in out
    assert main(["info", str(EXAMPLES / "digits.cell"), "--input", "1,16,16"]) == 2
    assert "--input counts the MACs of a derived network; this spec is a search space" in capsys.readouterr().err
