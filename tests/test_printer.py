"""parse -> print -> parse is the identity, over generated specs (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasir import ir
from nasir.api import load
from nasir.ops import DARTS_OPS, NB201_OPS
from nasir.printer import expr, print_spec

ALL_OPS = tuple(dict.fromkeys(DARTS_OPS + NB201_OPS))
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in {"include", "opset", "cell", "like", "inputs", "nodes", "edges", "choice", "output", "concat",
                        "keep", "per", "node", "stride", "from", "topology", "outputs", "any", "network", "input",
                        "stem", "head", "stack", "cells", "at", "residual", "auxiliary", "if", "search", "limit",
                        "budget", "true", "false"})  # fmt: skip


@st.composite
def cells(draw, name: str):
    n_inputs = draw(st.integers(1, 2))
    n_nodes = draw(st.integers(1, 5))
    inputs = tuple(ir.Node(x) for x in ("c_k2", "c_k1")[2 - n_inputs :])
    nodes = tuple(ir.Node(f"n{i}") for i in range(n_nodes))
    states = [x.name for x in inputs]
    search = draw(st.booleans())
    ops_set = tuple(draw(st.lists(st.sampled_from(ALL_OPS), min_size=1, max_size=5, unique=True)))
    edges = []
    for n in nodes:
        k = draw(st.integers(1, len(states))) if not search else len(states)
        srcs = draw(st.permutations(states))[:k] if not search else states
        for s in srcs:
            if search:
                edges.append(ir.Edge(s, n.name, choice=ir.Choice(ops_set, "{" + ", ".join(ops_set) + "}")))
            else:
                edges.append(ir.Edge(s, n.name, op=draw(st.sampled_from(ALL_OPS))))
        states.append(n.name)
    concat = draw(st.booleans())
    out = ir.Output("concat", tuple(n.name for n in nodes)) if concat else ir.Output("node", (nodes[-1].name,))
    # Every node must reach the output: with a single output node, chain the others into it.
    if not concat:
        for n in nodes[:-1]:
            if not any(e.src == n.name for e in edges):
                edges.append(ir.Edge(n.name, nodes[-1].name, op="skip_connect") if not search else
                             ir.Edge(n.name, nodes[-1].name, choice=edges[-1].choice))  # fmt: skip
        order = {x: i for i, x in enumerate(states)}
        edges.sort(key=lambda e: order[e.dst])
        if search:  # keep the canonical (dst, src) order of a full pattern
            edges = [e for e in edges]
    keep = draw(st.none() | st.integers(1, 1)) if search else None
    return ir.Cell(name, inputs, nodes, tuple(edges), out, reduction=draw(st.booleans()) and n_inputs == 2, keep=keep)


exprs = st.recursive(
    st.integers(0, 500).map(ir.Num) | st.sampled_from(["C", "layers"]).map(ir.Var) | st.booleans().map(ir.Bool),
    lambda sub: st.builds(ir.BinOp, st.sampled_from("+-*/"), sub, sub) | st.builds(ir.Neg, sub),
    max_leaves=6,
)


@st.composite
def specs(draw):
    names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    cs = tuple(draw(cells(n)) for n in names)
    search = None
    if draw(st.booleans()):
        settings_ = (ir.Setting("method", ir.Call("darts", (ir.Arg("order", ir.Num(draw(st.integers(1, 2)))),))),
                     ir.Setting("epochs", ir.Num(draw(st.integers(1, 99)))))  # fmt: skip
        search = ir.SearchConfig(settings_, (ir.Limit("skip_connect", draw(st.integers(1, 4))),), ())
    return ir.Spec("<gen>", (), (), cs, (), search)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_print_then_parse_is_identity(spec):
    text = print_spec(spec)
    again = load(text, name="<gen>")
    assert again == spec, text
    assert print_spec(again) == text


@settings(max_examples=200, deadline=None)
@given(exprs)
def test_expression_printing_keeps_precedence(e):
    from nasir.frontend import parse_text

    text = f"network n(p = {expr(e)}) {{ stack 1 cells(1): c }}"
    spec = parse_text(text)
    assert spec.networks[0].params[0].default == e, text


def test_a_long_set_of_parametric_ops_wraps_at_its_top_level_commas_and_round_trips():
    ops_ = ", ".join(f"mbconv(k = {k}, e = {e}, se = 0.25)" for k in (3, 5, 7) for e in (3, 6))
    spec = load(f"opset mb = {{{ops_}, skip_connect}}\n", name="t.cell")
    text = print_spec(spec)
    assert text.splitlines()[:3] == ["opset mb = {", "  mbconv(k = 3, e = 3, se = 0.25),", "  mbconv(k = 3, e = 6, se = 0.25),"]
    assert load(text, name="t.cell") == spec and len(spec.opset("mb").ops) == 7


def test_a_derived_cell_with_a_parametric_op_prints_edges_not_equations():
    text = "cell c {\n  inputs x\n  nodes n0\n  edges x -> n0 : sep_conv(k = 7)\n  output n0\n}\n"
    spec = load(text, name="t.cell")
    assert print_spec(spec) == text
    plain = load(text.replace("sep_conv(k = 7)", "sep_conv_7x7"), name="t.cell")
    assert "n0 = sep_conv_7x7(x)" in print_spec(plain)  # plain names keep the equation form


def test_a_dashed_setting_is_one_name_printed_as_written():
    # `select strength-star` is one name (README "Search methods"); the canonical text printed the
    # subtraction `strength - star`, in `nasir fmt --canonical` and in provenance.json's spec_text.
    from nasir.frontend import parse_text

    text = "search {\n  select strength-star\n  epochs 3 - 1\n}"
    spec = parse_text(text, "t.cell")
    select, epochs = spec.search.settings
    assert select.value == ir.Var("strength-star") and isinstance(epochs.value, ir.BinOp)
    assert print_spec(spec) == "search {\n  select strength-star\n  epochs 3 - 1\n}\n"
    assert parse_text(print_spec(spec), "t.cell") == spec
