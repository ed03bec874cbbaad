"""`nasir fmt` is lossless (issue 14.8): comments in place, `like`, edge patterns, includes kept; idempotent."""

from __future__ import annotations

import re

from helpers import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_printer import exprs, specs

from nasir.cli import main
from nasir.fmt import comments, format_text
from nasir.frontend import parse_text
from nasir.printer import expr, print_spec

MESSY = """\
# The DARTS space   
include "ops.cell"   # shared op sets
opset small={skip_connect,max_pool_3x3}
opset big = {
  none,  # zero
  sep_conv_3x3,
     # a comment in the middle
  max_pool_3x3
}
cell normal{inputs c_k2,c_k1 nodes n0..n3   # four nodes
  edges * -> n* : choice( darts )


  # keep two
  output concat(n0 .. n3) keep 2 inputs per node
  # last in block
}
cell reduce like normal { stride 2 from inputs }
network n(C=16,layers = 8,
   aux=false) {
  input (3,32,32)
  stem conv3x3(3*C),bn
  stack layers cells(C) : normal, reduce at 1 / 3, 2/3
  auxiliary cifar at 2/3 if aux
  head global_avg_pool,linear(-1 + 11)
}
search { method darts(order=1) epochs 50
limit skip_connect <= 2 per cell budget params <= 3.5M }
# end
"""  # noqa: W291 - the trailing spaces are part of the test

# Written by hand: the layout the module docstring of nasir/fmt.py describes.
EXPECTED = """\
# The DARTS space
include "ops.cell"  # shared op sets
opset small = {skip_connect, max_pool_3x3}
opset big = {
  none,  # zero
  sep_conv_3x3,
  # a comment in the middle
  max_pool_3x3
}

cell normal {
  inputs c_k2, c_k1
  nodes n0..n3  # four nodes
  edges * -> n* : choice(darts)

  # keep two
  output concat(n0..n3)
  keep 2 inputs per node
  # last in block
}

cell reduce like normal {
  stride 2 from inputs
}

network n(C = 16, layers = 8,
  aux = false) {
  input (3, 32, 32)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  auxiliary cifar at 2/3 if aux
  head global_avg_pool, linear(-1 + 11)
}

search {
  method darts(order = 1)
  epochs 50
  limit skip_connect <= 2 per cell
  budget params <= 3.5M
}

# end
"""


def test_layout_by_the_documented_rules():
    assert format_text(MESSY, "x.cell") == EXPECTED
    assert format_text(EXPECTED, "x.cell") == EXPECTED


def test_fmt_in_place_keeps_comments_like_patterns_and_includes(tmp_path, capsys):
    (tmp_path / "ops.cell").write_text((EXAMPLES / "ops.cell").read_text())
    src = tmp_path / "x.cell"
    text = ('include "ops.cell"  # the op sets\n\n# a normal cell\ncell normal {\n  inputs c_k2, c_k1\n  nodes n0..n3\n'
            "  edges * -> n* : choice(darts)  # every edge searched\n  output concat(n0..n3)\n  keep 2 inputs per node\n}\n\n"
            "cell reduce like normal {\n  stride 2 from inputs\n}\n")  # fmt: skip
    src.write_text(text)
    assert main(["fmt", "-i", str(src)]) == 0
    assert src.read_text() == text  # already in layout: not one character changes
    src.write_text(text.replace("\n  ", "\n      ").replace(", ", ","))
    assert main(["fmt", "-i", str(src)]) == 0
    assert src.read_text() == text
    capsys.readouterr()


def test_every_example_is_a_fixed_point_up_to_layout():
    for path in sorted(EXAMPLES.glob("*.cell")):
        text = path.read_text()
        once = format_text(text, path.name)
        assert format_text(once, path.name) == once, path.name
        assert [c.text for c in comments(once)] == [c.text for c in comments(text)], path.name
        assert parse_text(once, str(path)) == parse_text(text, str(path)), path.name


def test_comment_scanner_skips_strings():
    found = comments('include "a#b.cell"  # real\n# own line\n')
    assert [(c.text, c.line) for c in found] == [("# real", 1), ("# own line", 2)]


def test_deep_expressions_are_refused_not_a_recursion_error(capsys, tmp_path):
    src = tmp_path / "x.cell"
    src.write_text("network n(C = " + " + ".join(["1"] * 600) + ") { stack 1 cells(C): c }\n")
    assert main(["fmt", str(src)]) == 2
    assert "expression nested 599 levels deep" in capsys.readouterr().err


# ---- hypothesis: messy layouts and comments around generated specs -----------------------------------------------
_TOKEN = re.compile(r'"[^"\n]*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*\*|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?[kKMG]?|'
                    r"[A-Za-z_][A-Za-z0-9_]*|\.\.|->|<=|\S")  # fmt: skip


@st.composite
def messy(draw):
    """Canonical text of a generated spec (plus a `like` cell and a pattern), re-laid out at random
    with comments put between tokens."""
    spec = draw(specs())
    text = print_spec(spec)
    first = spec.cells[0]
    text += f"\ncell {first.name}_like like {first.name} {{\n  keep 1 inputs per node\n}}\n"
    if draw(st.booleans()):
        e = draw(exprs)
        text += f"\nnetwork net(p = {expr(e)}, C = 4) {{\n  stack 2 cells(C): {first.name}\n  head global_avg_pool, linear(p)\n}}\n"
    toks = _TOKEN.findall(text)
    seps = draw(st.lists(st.sampled_from([" ", "  ", "\n", "\n\n", "\n\n\n", "\t", " # c\n", "\n# own\n"]),
                         min_size=len(toks), max_size=len(toks)))  # fmt: skip
    numbered = []
    for k, sep in enumerate(seps):
        numbered.append(sep.replace("# c", f"# c{k}").replace("# own", f"# own{k}"))
    return "".join(t + s for t, s in zip(toks, numbered))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messy())
def test_fmt_is_idempotent_lossless_and_keeps_the_meaning(text):
    once = format_text(text, "gen.cell")
    assert format_text(once, "gen.cell") == once
    assert [c.text for c in comments(once)] == [c.text for c in comments(text)]
    assert parse_text(once, "gen.cell") == parse_text(text, "gen.cell")
    assert all(line == line.rstrip() for line in once.splitlines())


def test_deeply_parenthesised_expressions_are_refused_not_a_recursion_error(capsys, tmp_path):
    src = tmp_path / "x.cell"
    src.write_text("network n(C = " + "(" * 5000 + "1" + ")" * 5000 + ") { stack 1 cells(C): c }\n")
    assert main(["fmt", str(src)]) == 2
    assert "expression nested 5000 levels deep" in capsys.readouterr().err


def test_parametric_ops_and_ops_lines_get_the_documented_layout():
    messy = 'ops   "my ops.py"\nopset mb={mbconv( k=3 ,e = 2),sep_conv(k=7) , skip_connect}\ncell c {inputs x nodes n0\nedges x->n0:mbconv(k=5)\noutput n0}\n'
    expected = ('ops "my ops.py"\nopset mb = {mbconv(k = 3, e = 2), sep_conv(k = 7), skip_connect}\n\ncell c {\n  inputs x\n'
                "  nodes n0\n  edges x -> n0 : mbconv(k = 5)\n  output n0\n}\n")  # fmt: skip
    assert format_text(messy, "x.cell") == expected
    assert format_text(expected, "x.cell") == expected


def test_a_dashed_setting_keeps_its_dash_and_a_spaced_subtraction_its_spaces():
    # `select strength-star` is the README's spelling (lexed as strength - star); fmt printed `strength - star`
    messy = "search {\n  select   strength-star\n  epochs 3-1\n  batch_size 4 - 1\n}\n"
    expected = "search {\n  select strength-star\n  epochs 3-1\n  batch_size 4 - 1\n}\n"
    assert format_text(messy, "x.cell") == expected
    assert format_text(expected, "x.cell") == expected
    assert "a - b" in format_text("network n(a = 2, b = 1) {\n  input (a-b, 8, 8)\n}\n", "x.cell")


def test_fmt_reads_standard_input_as_check_does(capsys, monkeypatch):
    import io

    messy = "\ufeffsearch {\n select   strength-star\n}\n"  # with a byte-order mark
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(messy.encode())))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == "search {\n  select strength-star\n}\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"search {\n  select strength-star\n}\n")))
    assert main(["fmt", "--canonical", "-"]) == 0
    assert capsys.readouterr().out == "search {\n  select strength-star\n}\n"
    assert main(["fmt", "-i", "-"]) == 2
    assert "standard input cannot be rewritten in place" in capsys.readouterr().err
