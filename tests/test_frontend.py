"""The front end: what the DSL says becomes the expected explicit IR; bad text gets pointed errors."""

from __future__ import annotations

import pytest
from helpers import DARTS_CELLS, EXAMPLES, errors_of, spec_of

from nasir import ir
from nasir.api import load
from nasir.printer import print_spec

DARTS_SPACE = DARTS_CELLS


def test_darts_pattern_expands_to_14_edges_in_reference_order():
    spec = spec_of(DARTS_SPACE)
    c = spec.cell("normal")
    # Hand enumeration: node k reads the 2 inputs and the k earlier nodes: 2 + 3 + 4 + 5 = 14.
    expected = [(s, f"n{k}") for k in range(4) for s in ["c_k2", "c_k1"] + [f"n{j}" for j in range(k)]]
    assert [(e.src, e.dst) for e in c.edges] == expected
    assert all(e.choice.ops == ir_ops_darts() for e in c.edges)


def ir_ops_darts():
    from nasir.ops import DARTS_OPS

    return DARTS_OPS


def test_like_copies_the_cell_and_adds_the_stride():
    spec = spec_of(DARTS_SPACE)
    normal, reduce = spec.cell("normal"), spec.cell("reduce")
    assert reduce.edges == normal.edges and reduce.nodes == normal.nodes
    assert reduce.reduction and not normal.reduction
    # edges: c_k2->n0, c_k1->n0, c_k2->n1, c_k1->n1, n0->n1: only those leaving inputs reduce
    assert [reduce.stride(e) for e in reduce.edges[:5]] == [2, 2, 2, 2, 1]


def test_set_difference_removes_ops_and_keeps_order():
    spec = spec_of(DARTS_SPACE.replace("choice(darts)", "choice(darts - {none, skip_connect})"))
    assert spec.cell("normal").edges[0].choice.ops == (
        "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")  # fmt: skip


def test_equations_give_fixed_edges_in_order():
    spec = load(EXAMPLES / "darts_v2.cell")
    n = spec.cell("normal")
    assert [(e.op, e.src, e.dst) for e in n.edges][:3] == [
        ("sep_conv_3x3", "c_k2", "n0"), ("sep_conv_3x3", "c_k1", "n0"), ("sep_conv_3x3", "c_k2", "n1")]  # fmt: skip
    assert not spec.is_search_space
    assert n.output == ir.Output("concat", ("n0", "n1", "n2", "n3"))


def test_topology_declarations_parse_to_their_kind():
    for text, kind, k in (("outputs any", "any", None), ("outputs 2", "outputs", 2), ("inputs 2", "inputs", 2)):
        spec = spec_of(DARTS_SPACE.replace("keep 2 inputs per node", f"topology {text}").replace("choice(darts)", "choice(darts - none)"))
        assert spec.cell("normal").topology == ir.Topology(kind, k)


def test_include_merges_declarations_and_printing_keeps_the_include(tmp_path):
    (tmp_path / "ops.cell").write_text("opset small = {skip_connect, sep_conv_3x3}\n")
    main = tmp_path / "main.cell"
    main.write_text('include "ops.cell"\ncell c { inputs a, b\n nodes n0\n edges * -> n0 : choice(small)\n output n0 }\n')
    spec = load(main)
    assert spec.opset("small").ops == ("skip_connect", "sep_conv_3x3")
    text = print_spec(spec)
    assert text.startswith('include "ops.cell"') and "opset small" not in text


def test_search_block_settings_limits_and_budget():
    spec = spec_of(DARTS_SPACE + """
search {
  method darts(order = 2)
  select strength
  limit skip_connect <= 2 per cell
  budget params <= 3.5M
}
""")
    s = spec.search
    assert s.setting("method").value.kwargs()["order"] == ir.Num(2)
    assert s.limits == (ir.Limit("skip_connect", 2),)
    assert s.budgets[0].value.value == 3_500_000


def test_set_overrides_network_parameters():
    from nasir.macro import plan

    spec = load(EXAMPLES / "darts_v2.cell", overrides=["C=16", "layers=8"])
    p = plan(spec, overrides={"C": 16, "layers": 8})
    # DARTS rule: reductions at layers // 3 and 2 * layers // 3 -> cells 2 and 5 of 8; C doubles at each.
    assert [(c.cell, c.C) for c in p.cells] == [("normal", 16)] * 2 + [("reduce", 32)] + [("normal", 32)] * 2 + [("reduce", 64)] + [("normal", 64)] * 2


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.cell")), ids=lambda p: p.name)
def test_example_parses_verifies_and_round_trips(path):
    spec = load(path)
    again = load(print_spec(spec), name=str(path))  # same name: include paths resolve alike
    assert again == spec


# ---- syntax errors: exact positions ------------------------------------------------------------
def test_syntax_error_points_at_the_unexpected_token():
    assert errors_of("cell c {\n  inputs a\n  nodes n0, , n1\n}\n") == [(3, 13, "unexpected ','; expected a name")]


def test_an_unterminated_string_ends_at_its_line_so_later_declarations_are_still_checked():
    # the string token ends at the newline, as grammar/cell.lark's STRING does (one scanner, nasir/scan.py);
    # the ')' is column 69: 68 characters precede it on line 2, counted by hand
    text = 'include "a.cell\ncell x { inputs a  nodes n0  edges a -> n0: skip_connect  output n0 ) }\n'
    assert errors_of(text) == [(1, 9, "unexpected character '\"'"), (2, 69, "unexpected ')'; expected '}', a name")]


def test_missing_brace_is_reported_at_the_next_declaration():
    errs = errors_of("cell c {\n  inputs a\n  output a\n\nopset s = {none}\n")
    assert errs == [(5, 1, "'opset' cannot appear inside a block")]


def test_every_broken_declaration_is_reported_in_one_run():
    errs = errors_of("opset a = {none,, skip_connect}\ncell c { inputs x nodes }\nopset b = {none}\nnetwork n( { }\n")
    assert [(line, col) for line, col, _ in errs] == [(1, 17), (2, 25), (4, 12)]


def test_bad_character_is_a_diagnostic_not_a_traceback():
    assert errors_of("cell c { inputs a; }")[0][:2] == (1, 18)


def test_unexpected_end_of_file():
    line, col, msg = errors_of("cell c {\n  inputs a\n")[0]
    assert line == 2 and msg.startswith("unexpected end of file")


def test_ops_keyword_leaves_an_op_set_named_ops_alone():
    spec = spec_of("""
    opset ops = {none, skip_connect}
    opset b = ops - {none}
    cell c {
      inputs x
      nodes n0
      edges x -> n0 : choice(ops)
      output n0
    }
    """)
    assert spec.opset("b").ops == ("skip_connect",) and spec.cell("c").edges[0].choice.ops == ("none", "skip_connect")


def test_raw_syntax_tree_is_typed_nodes_read_by_field_with_spans():
    # issue 11: the transformer builds one frozen class per construct (nasir/syntax.py), nothing positional.
    from nasir import syntax as syn
    from nasir.frontend import parse_decls
    from nasir.source import SourceFile

    text = (
        'include "base.cell"\n'
        "opset s = {skip_connect, mbconv(k = 5)} - {skip_connect}\n"
        "cell c like b {\n"
        "  inputs x, y\n"
        "  nodes n0..n2, m\n"
        "  edges * -> n*: choice(s)\n"
        "  m = max_pool_3x3(x) + skip_connect(n0)\n"
        "  output concat(n0..n2)\n"
        "  stride 2 from inputs\n"
        "}\n"
        "network net(C = 8) { stack 2 cells(C): c, c at 1/2  head linear(10) }\n"
        "search { limit skip_connect <= 2 per cell  epochs 3 }\n"
    )
    inc, ops_, cell, net, search = parse_decls(SourceFile("t.cell", text))
    assert inc == syn.IncludeDecl("base.cell") and (inc.span.line, inc.span.col) == (1, 1)
    assert isinstance(ops_, syn.OpsetDecl) and ops_.name == "s" and (ops_.name_span.line, ops_.name_span.col) == (2, 7)
    assert isinstance(ops_.expr, syn.SetDiff) and ops_.expr.text() == "{skip_connect, mbconv(k = 5)} - {skip_connect}"
    call = ops_.expr.left.items[1]
    assert call == syn.OpItem("mbconv", (syn.OpArg("k", 5),)) and (call.args[0].span.line, call.args[0].span.col) == (2, 33)
    assert (cell.name, cell.like, (cell.like_span.line, cell.like_span.col)) == ("c", "b", (3, 13))
    kinds = [type(s).__name__ for s in cell.stmts]
    assert kinds == ["InputsStmt", "NodesStmt", "EdgesStmt", "EquationStmt", "OutputStmt", "StrideStmt"]
    inputs, nodes, edges, eq, out, stride = cell.stmts
    assert [n.name for n in inputs.nodes] == ["x", "y"]
    assert nodes.items == (syn.NodeRange(ir.Node("n0"), ir.Node("n2")), syn.NodeOne(ir.Node("m")))
    assert (edges.src.kind, edges.dst.kind, edges.dst.name) == ("any", "glob", "n*")
    assert (edges.dst.span.line, edges.dst.span.col) == (6, 14)
    assert isinstance(edges.op, syn.EdgeChoice) and edges.op.ops == syn.SetRef("s")
    assert eq.target.name == "m" and [(t.op, t.src) for t in eq.terms] == [("max_pool_3x3", "x"), ("skip_connect", "n0")]
    assert (eq.terms[1].src_span.line, eq.terms[1].src_span.col) == (7, 38)
    assert out.form == "concat" and out.kind == "output"
    assert (stride.stride, stride.stride_span.col, stride.kind) == (2, 10, "stride")
    assert isinstance(net, syn.NetworkDecl) and [p.name for p in net.params] == ["C"]
    stack, head = net.stmts
    assert isinstance(stack, syn.StackStmt) and (stack.cell, stack.reduce, stack.at) == ("c", "c", (ir.Frac(1, 2),))
    assert (stack.cell_span.col, stack.reduce_span.line, stack.reduce_span.col) == (40, 11, 43)
    assert isinstance(head, syn.HeadStmt) and [layer.name for layer in head.layers] == ["linear"]
    assert isinstance(search, syn.SearchDecl)
    assert [type(x) for x in search.items] == [ir.Limit, ir.Setting]


def test_a_problem_reached_twice_is_reported_once():
    # `reduce like normal` shares the edge text of `normal`: an unknown op set in it was reported twice
    # at the same place.
    text = ("cell normal {\n  inputs a, b\n  nodes n0\n  edges * -> n0 : choice(nope)\n  output n0\n}\n"
            "cell reduce like normal {\n  stride 2 from inputs\n}\n")  # fmt: skip
    assert errors_of(text) == [(4, 26, "unknown op or op set 'nope'")]
    from nasir.diagnostics import Diagnostic, DiagnosticError
    from nasir.source import Span

    a, b = (Span("f.cell", 1, 2, 1, 5) for _ in range(2))  # equal places, distinct objects
    kept = DiagnosticError([Diagnostic("m", a), Diagnostic("m", b), Diagnostic("m", b, "h"), Diagnostic("n", a)])
    assert [(d.message, d.hint) for d in kept.diagnostics] == [("m", None), ("m", "h"), ("n", None)]
