"""Every verifier rule has a small failing spec and the exact line:col of its diagnostic."""

from __future__ import annotations

from helpers import errors_of

BASE_CELL = """
cell c {{
  inputs a, b
  nodes n0, n1
{body}
  output concat(n0, n1)
}}
"""


def cell(body: str) -> str:
    return BASE_CELL.format(body=body)


def test_cycle():
    errs = errors_of(cell("  edges a -> n0 : skip_connect\n  edges n1 -> n0 : skip_connect\n  edges n0 -> n1 : skip_connect"))
    assert errs == [(6, 3, "cycle: n0 -> n1 -> n0")]


def test_unknown_op_with_hint():
    assert errors_of(cell("  edges a -> n0 : sep_conv_3x33\n  edges n0 -> n1 : skip_connect")) == [(4, 19, "unknown op 'sep_conv_3x33'")]


def test_unknown_node_in_equation():
    assert errors_of("cell c {\n  inputs a\n  n0 = skip_connect(q)\n  output n0\n}\n") == [(3, 21, "unknown node 'q' in cell 'c'")]


def test_unknown_opset_in_choice():
    assert errors_of(cell("  edges * -> * : choice(drts)")) == [(4, 25, "unknown op or op set 'drts'")]


def test_node_unreachable_from_inputs():
    errs = errors_of(cell("  edges a -> n0 : skip_connect\n  edges n1 -> n0 : skip_connect"))
    assert (3, 13, "node 'n1' is unreachable from the inputs of cell 'c'") in errs


def test_node_not_reaching_output():
    text = "cell c {\n  inputs a\n  nodes n0, n1\n  edges a -> n0 : skip_connect\n  edges a -> n1 : skip_connect\n  output n0\n}\n"
    assert errors_of(text) == [(3, 13, "node 'n1' does not reach the output of cell 'c'")]


def test_edge_into_input():
    errs = errors_of(cell("  edges n0 -> a : skip_connect\n  edges a -> n0 : skip_connect\n  edges n0 -> n1 : skip_connect"))
    assert errs == [(4, 3, "edge n0 -> a enters the cell input 'a'")]


def test_pattern_into_inputs_is_rejected():
    assert errors_of(cell("  edges * -> inputs : skip_connect"))[0][:2] == (4, 14)


def test_duplicate_node_name():
    errs = errors_of("cell c {\n  inputs a, a\n  nodes n0\n  edges a -> n0 : skip_connect\n  output n0\n}\n")
    assert errs[0][:2] == (2, 13) and "defined twice" in errs[0][2]


def test_duplicate_cell_name():
    text = "cell c {\n inputs a\n n0 = skip_connect(a)\n output n0\n}\ncell c {\n inputs a\n n0 = skip_connect(a)\n output n0\n}\n"
    assert errors_of(text) == [(6, 1, "cell 'c' is defined twice")]


def test_duplicate_equation_for_a_node():
    text = "cell c {\n inputs a\n n0 = skip_connect(a)\n n0 = skip_connect(a)\n output n0\n}\n"
    assert errors_of(text) == [(4, 2, "node 'n0' is defined twice")]


def test_empty_opset_after_difference():
    assert errors_of("opset a = {none}\nopset b = a - none\n") == [(2, 11, "op set 'b' is empty")]


def test_keep_more_inputs_than_predecessors():
    errs = errors_of(cell("  edges * -> * : choice({skip_connect, sep_conv_3x3})\n  keep 3 inputs per node"))
    assert errs == [(5, 3, "no architecture can keep 3 inputs for node 'n0': it has 2 predecessors")]


def test_topology_inputs_with_too_few_predecessors():
    text = "cell c {\n inputs a\n nodes n0, n1\n edges * -> * : choice({skip_connect, sep_conv_3x3})\n topology inputs 2\n output concat(n0, n1)\n}\n"
    assert errors_of(text) == [(5, 2, "node 'n0' has 1 predecessors, fewer than the 2 inputs it must pick")]


def test_like_of_unknown_cell():
    assert errors_of("cell r like nrmal { stride 2 from inputs }\n") == [(1, 13, "'like' names an unknown cell 'nrmal'")]


NET = """
cell c {{
  inputs a, b
  n0 = skip_connect(a) + skip_connect(b)
  output concat(n0)
}}
cell r {{
  inputs a, b
  stride 2 from inputs
  n0 = skip_connect(a) + skip_connect(b)
  output concat(n0)
}}
network net({params}) {{
  stem conv3x3(3 * C), bn
  stack layers cells(C): {stack}
  head global_avg_pool, linear(classes)
}}
"""


def net(params="C = 16, layers = 8, classes = 10", stack="c, r at 1/3, 2/3") -> str:
    return NET.format(params=params, stack=stack)


def test_parameter_without_value():
    assert errors_of(net(params="C = 16, layers, classes = 10")) == [(12, 21, "parameter 'layers' has no value")]


def test_parameter_without_value_is_fine_when_set_on_the_command_line():
    from helpers import spec_of

    assert spec_of(net(params="C = 16, layers, classes = 10"), overrides=["layers=5"]).networks[0].name == "net"


def test_unknown_parameter_in_expression():
    assert errors_of(net().replace("3 * C", "3 * D")) == [(13, 20, "unknown parameter 'D'")]


def test_unknown_set_parameter_points_into_the_command_line():
    errs = errors_of(net(), overrides=["layerz=5"])
    assert errs == [(1, 7, "network 'net' has no parameter 'layerz'")]


def test_unknown_cell_in_stack():
    assert errors_of(net(stack="c, red at 1/3, 2/3")) == [(14, 3, "network 'net' stacks unknown cell 'red'")]


def test_inconsistent_strides():
    errs = errors_of(net(stack="r, c at 1/3, 2/3"))
    assert [e[2].split(":")[0] for e in errs] == ["inconsistent strides"] * 2


def test_inconsistent_channels_of_a_one_input_cell():
    text = """
cell x {
  inputs a
  nodes n0, n1
  edges * -> * : choice({skip_connect, sep_conv_3x3})
  output concat(n0, n1)
}
network net(C = 16, classes = 10) {
  stem conv3x3(C), bn
  stack 5 cells(C): x
  head global_avg_pool, linear(classes)
}
"""
    errs = errors_of(text)
    assert errs == [(5, 3, "inconsistent channels: one-input cell 'x' must keep its channels, but its output concatenates 2 nodes")]


def test_channels_must_be_whole_numbers():
    assert errors_of(net(params="C = 15, layers = 8, classes = 10").replace("3 * C", "C / 2")) == [(13, 16, "channels must be a whole number, got 7.5")]


def test_unknown_search_setting_and_unsatisfiable_limit():
    text = cell("  edges * -> * : choice({skip_connect})") + "search {\n  methd darts\n  limit skip_connect <= 0 per cell\n}\n"
    errs = errors_of(text)
    assert errs == [(8, 3, "unknown search setting 'methd'"),
                    (9, 3, "no architecture meets this limit: node 'n0' of cell 'c' can only choose 'skip_connect'")]  # fmt: skip


def test_all_errors_of_a_file_are_reported_together():
    text = cell("  edges a -> n0 : sep_cnv_3x3\n  edges n0 -> n1 : skip_connect\n  edges n0 -> zz : skip_connect")
    assert len(errors_of(text)) == 2
