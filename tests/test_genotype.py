"""Genotype text <-> `.cell`: published genotypes import to the cells they describe, round trips are exact,
and every malformed input is a diagnostic at its line:col (never a traceback, never an evaluation)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from nasir.api import load
from nasir.diagnostics import DiagnosticError
from nasir.frontend import parse_text
from nasir.genotype import (
    Genotype,
    NB201Arch,
    genotype_cells,
    genotype_from_spec,
    genotype_to_spec_text,
    nb201_from_spec,
    parse_genotype,
    read_genotype,
    spec_to_genotype,
    spec_to_nb201,
)
from nasir.macros import MACROS, macro_text
from nasir.printer import print_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# DARTS (quark0/darts, cnn/genotypes.py), verbatim.
DARTS_V2 = (
    "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)

# A genotypes.py as the DARTS repository writes it: imports, a namedtuple, a list, several genotypes
# (NASNet and AmoebaNet with five nodes, reconstructed from memory of that file), and an alias.
DARTS_FILE = """\
from collections import namedtuple

Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')

PRIMITIVES = [
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5'
]

NASNet = Genotype(
  normal = [
    ('sep_conv_5x5', 1),
    ('sep_conv_3x3', 0),
    ('sep_conv_5x5', 0),
    ('sep_conv_3x3', 0),
    ('avg_pool_3x3', 1),
    ('skip_connect', 0),
    ('avg_pool_3x3', 0),
    ('avg_pool_3x3', 0),
    ('sep_conv_3x3', 1),
    ('skip_connect', 1),
  ],
  normal_concat = [2, 3, 4, 5, 6],
  reduce = [
    ('sep_conv_5x5', 1),
    ('sep_conv_7x7', 0),
    ('max_pool_3x3', 1),
    ('sep_conv_7x7', 0),
    ('avg_pool_3x3', 1),
    ('sep_conv_5x5', 0),
    ('skip_connect', 3),
    ('avg_pool_3x3', 2),
    ('sep_conv_3x3', 2),
    ('max_pool_3x3', 1),
  ],
  reduce_concat = [4, 5, 6],
)

AmoebaNet = Genotype(
  normal = [
    ('avg_pool_3x3', 0),
    ('max_pool_3x3', 1),
    ('sep_conv_3x3', 0),
    ('sep_conv_5x5', 2),
    ('sep_conv_3x3', 0),
    ('avg_pool_3x3', 3),
    ('sep_conv_3x3', 1),
    ('skip_connect', 1),
    ('skip_connect', 0),
    ('avg_pool_3x3', 1),
    ],
  normal_concat = [4, 5, 6],
  reduce = [
    ('avg_pool_3x3', 0),
    ('sep_conv_3x3', 1),
    ('max_pool_3x3', 0),
    ('sep_conv_7x7', 2),
    ('sep_conv_7x7', 0),
    ('avg_pool_3x3', 1),
    ('max_pool_3x3', 0),
    ('max_pool_3x3', 1),
    ('conv_7x1_1x7', 0),
    ('sep_conv_3x3', 5),
  ],
  reduce_concat = [3, 4, 6]
)

{DARTS_V2}

DARTS = DARTS_V2
""".replace("{DARTS_V2}", DARTS_V2)

# PC-DARTS (yuhuixu1993/PC-DARTS, genotypes.py), rewritten multi-line with trailing commas.
PC_DARTS = """\
PC_DARTS_cifar = Genotype(
    normal=[
        ('sep_conv_3x3', 1), ('skip_connect', 0),
        ('sep_conv_3x3', 0), ('dil_conv_3x3', 1),
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 1),
        ('avg_pool_3x3', 0), ('dil_conv_3x3', 1),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ('sep_conv_5x5', 1), ('max_pool_3x3', 0),
        ('sep_conv_5x5', 1), ('sep_conv_5x5', 2),
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
    ],
    reduce_concat=range(2, 6),
)
PC_DARTS_image = Genotype(
    normal=[
        ('skip_connect', 1), ('sep_conv_3x3', 0),
        ('sep_conv_3x3', 0), ('skip_connect', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 3),
        ('sep_conv_3x3', 1), ('dil_conv_5x5', 4),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ('sep_conv_3x3', 0), ('skip_connect', 1),
        ('dil_conv_5x5', 2), ('max_pool_3x3', 1),
        ('sep_conv_3x3', 2), ('sep_conv_3x3', 1),
        ('sep_conv_5x5', 0), ('sep_conv_3x3', 3),
    ],
    reduce_concat=range(2, 6),
)

PCDARTS = PC_DARTS_cifar
"""

# P-DARTS (chenxin061/pdarts, genotypes.py), double quotes and comments added.
P_DARTS = """\
# CIFAR-10, searched with progressive depth (5 -> 11 -> 17 cells)
PDARTS = Genotype(
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1),   # node 0
            ("skip_connect", 0), ("sep_conv_3x3", 1),   # node 1
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3),
            ("sep_conv_3x3", 0), ("dil_conv_5x5", 4),],
    normal_concat=range(2, 6),
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1),
            ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1),
            ("dil_conv_3x3", 1), ("dil_conv_5x5", 3),],
    reduce_concat=range(2, 6),
)
"""

# SDARTS (xiangning-chen/SmoothDARTS). NOTE: the op lists below are written from memory and may differ
# from the repository's in places; they are well-formed genotypes of the same shape and format.
SDARTS = """\
SDARTS_RS = Genotype(
    normal=[
        ('sep_conv_3x3', 0), ('sep_conv_5x5', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 0),
        ('max_pool_3x3', 0), ('skip_connect', 2),
        ('skip_connect', 2), ('avg_pool_3x3', 0),
    ],
    reduce_concat=range(2, 6),
)
SDARTS_ADV = Genotype(
    normal=[
        ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
        ('skip_connect', 0), ('dil_conv_3x3', 2),
        ('skip_connect', 0), ('sep_conv_3x3', 1),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 0),
        ('max_pool_3x3', 0), ('skip_connect', 2),
        ('skip_connect', 2), ('max_pool_3x3', 0),
    ],
    reduce_concat=range(2, 6),
)
"""

# The node-pair form (AutoDL-Projects style): each node a tuple of two pairs, extra fields ignored.
DARTS_V2_PAIRS = """\
DARTS_V2 = Genotype(
    normal=[
        (('sep_conv_3x3', 0), ('sep_conv_3x3', 1)),
        (('sep_conv_3x3', 0), ('sep_conv_3x3', 1)),
        (('sep_conv_3x3', 1), ('skip_connect', 0)),
        (('skip_connect', 0), ('dil_conv_3x3', 2)),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        (('max_pool_3x3', 0), ('max_pool_3x3', 1)),
        (('skip_connect', 2), ('max_pool_3x3', 1)),
        (('max_pool_3x3', 0), ('skip_connect', 2)),
        (('skip_connect', 2), ('max_pool_3x3', 1)),
    ],
    reduce_concat=[2, 3, 4, 5],
    normal_bottleneck='',
    connectN=None,
    connect=None,
    connects=[None, 1, [2, 3]],
)
"""

NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def errors(text: str, name: str | None = None) -> list[str]:
    with pytest.raises(DiagnosticError) as info:
        parse_genotype(text, name)
    return [f"{d.span.line}:{d.span.col}: {d.message}" if d.span else d.message for d in info.value.diagnostics]


# ---- DARTS import ---------------------------------------------------------------------------------
def test_darts_v2_genotype_imports_to_the_cells_of_examples_darts_v2():
    spec = load(genotype_to_spec_text(parse_genotype(DARTS_V2), "cifar"))
    ref = load(EXAMPLES / "darts_v2.cell")
    assert spec.cell("normal") == ref.cell("normal")
    assert spec.cell("reduce") == ref.cell("reduce")
    assert spec.networks == ref.networks


def test_darts_v2_in_imagenet_macro_equals_examples_darts_v2_imagenet():
    spec = load(genotype_to_spec_text(parse_genotype(DARTS_V2), "imagenet"))
    ref = load(EXAMPLES / "darts_v2_imagenet.cell")
    assert spec.cells == ref.cells
    assert spec.networks == ref.networks


def test_darts_v2_genotype_fields_are_the_published_lists():
    g = parse_genotype(DARTS_V2)
    assert g.normal[7] == ("dil_conv_3x3", 2)
    assert g.reduce[:2] == (("max_pool_3x3", 0), ("max_pool_3x3", 1))
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


@pytest.mark.parametrize("macro", ["cifar", "imagenet"])
@pytest.mark.parametrize(
    "text, name",
    [(DARTS_V2, None), (DARTS_FILE, "NASNet"), (DARTS_FILE, "AmoebaNet"), (PC_DARTS, "PC_DARTS_cifar"),
     (PC_DARTS, "PC_DARTS_image"), (P_DARTS, None), (SDARTS, "SDARTS_RS"), (SDARTS, "SDARTS_ADV")],
)  # fmt: skip
def test_genotype_to_spec_to_genotype_string_parses_back_equal(text, name, macro):
    g = parse_genotype(text, name)
    spec = load(genotype_to_spec_text(g, macro))
    assert parse_text(print_spec(spec)) == spec
    assert parse_genotype(spec_to_genotype(spec)) == g
    assert genotype_from_spec(spec) == g


def test_spec_to_genotype_of_examples_darts_v2_is_the_darts_repository_string():
    assert spec_to_genotype(load(EXAMPLES / "darts_v2.cell")) == DARTS_V2.removeprefix("DARTS_V2 = ")


def test_pc_darts_p_darts_sdarts_multiline_genotypes_parse_with_range_concat():
    pc = parse_genotype(PC_DARTS, "PC_DARTS_cifar")
    assert pc.normal[:2] == (("sep_conv_3x3", 1), ("skip_connect", 0))
    assert pc.normal_concat == pc.reduce_concat == (2, 3, 4, 5)
    assert parse_genotype(PC_DARTS, "PCDARTS") == pc  # alias followed
    pd = parse_genotype(P_DARTS)
    assert pd.normal[-1] == ("dil_conv_5x5", 4) and pd.reduce[0] == ("avg_pool_3x3", 0)
    rs, adv = parse_genotype(SDARTS, "SDARTS_RS"), parse_genotype(SDARTS, "SDARTS_ADV")
    assert rs != adv and len(rs.normal) == len(adv.reduce) == 8


def test_darts_genotypes_file_needs_a_name_and_follows_alias_by_name():
    with pytest.raises(DiagnosticError) as e:
        parse_genotype(DARTS_FILE, source_name="genotypes.py")
    d = e.value.diagnostics[0]
    defined = re.findall(r"^(\w+) = Genotype\(", DARTS_FILE, re.M)  # independent count of the definitions
    assert len(defined) >= 3
    assert d.message == f"genotypes.py defines {len(defined)} genotypes; choose one with --name"
    assert d.hint == "names: " + ", ".join(defined)
    first = parse_genotype(DARTS_FILE, "NASNet")
    assert len(first.normal) == 10 and first.reduce_concat == (4, 5, 6)
    assert parse_genotype(DARTS_FILE, "DARTS") == parse_genotype(DARTS_V2)


def test_pair_form_with_extra_fields_parses_to_the_flat_form():
    assert parse_genotype(DARTS_V2_PAIRS) == parse_genotype(DARTS_V2)


def test_positional_fields_and_dotted_callee_are_the_namedtuple_order():
    text = "genotypes.Genotype([('skip_connect', 0), ('sep_conv_3x3', 1)], [2], [('max_pool_3x3', 0), ('max_pool_3x3', 1)], [2])"
    assert parse_genotype(text) == Genotype(
        [("skip_connect", 0), ("sep_conv_3x3", 1)], [2], [("max_pool_3x3", 0), ("max_pool_3x3", 1)], [2]
    )


def test_read_genotype_names_diagnostics_after_the_file(tmp_path):
    path = tmp_path / "g.py"
    path.write_text("x = 1\nG = Genotype(normal=[('sep_conv_3x3', 0), ('bogus', 1)])\n")
    with pytest.raises(DiagnosticError) as info:
        read_genotype(path)
    assert str(info.value.diagnostics[0].span) == f"{path}:2:5"  # missing fields, at the callee
    assert any(str(d.span) == f"{path}:2:45" and d.message == "unknown op 'bogus'" for d in info.value.diagnostics)


def test_spec_text_has_no_cells_but_the_genotype_and_the_macro():
    text = genotype_to_spec_text(parse_genotype(DARTS_V2), source_name="darts.txt")
    spec = load(text)
    assert [c.name for c in spec.cells] == ["normal", "reduce"]
    assert [n.name for n in spec.networks] == ["cifar"]
    assert text.startswith("# Imported from darts.txt")


# ---- NAS-Bench-201 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("quote", ["", "'", '"'])
def test_nb201_string_round_trips_through_the_spec(quote):
    arch = parse_genotype(f"{quote}{NB201}{quote}\n")
    assert isinstance(arch, NB201Arch)
    assert arch.nodes[2] == (("skip_connect", 0), ("nor_conv_3x3", 1), ("skip_connect", 2))
    spec = load(genotype_to_spec_text(arch))
    assert parse_text(print_spec(spec)) == spec
    assert spec_to_nb201(spec) == NB201
    assert spec.networks == load(EXAMPLES / "nb201.cell").networks


def test_nb201_cell_has_the_edges_of_the_string():
    (cell,) = genotype_cells(parse_genotype(NB201))
    assert cell.input_names == ("x",) and cell.node_names == ("n1", "n2", "n3")
    assert [(e.src, e.dst, e.op) for e in cell.in_edges("n2")] == [
        ("x", "n2", "nor_conv_3x3"),
        ("n1", "n2", "avg_pool_3x3"),
    ]
    assert cell.output.kind == "node" and cell.output.nodes == ("n3",)


def test_nb201_none_edges_are_kept_and_missing_edges_read_as_none():
    text = "|none~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_1x1~2|"
    assert spec_to_nb201(load(genotype_to_spec_text(parse_genotype(text)))) == text
    pruned = load(
        "cell nbcell {\n inputs x\n n1 = skip_connect(x)\n n2 = nor_conv_3x3(n1)\n n3 = avg_pool_3x3(n2)\n output n3\n}\n"
    )
    assert str(nb201_from_spec(pruned)) == "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|avg_pool_3x3~2|"


def test_nb201_string_in_an_assignment_is_found():
    assert parse_genotype(f"arch = '{NB201}'") == parse_genotype(NB201)


# ---- malformed input ------------------------------------------------------------------------------
MALFORMED = {
    "unknown op": (
        "G = Genotype(\n    normal=[('sep_conv_9x9', 0), ('sep_conv_3x3', 1)],\n    normal_concat=[2],\n"
        "    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)],\n    reduce_concat=[2],\n)\n",
        ["2:15: unknown op 'sep_conv_9x9'"],
    ),
    "missing closing bracket of a list": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), normal_concat=[2], reduce=[], reduce_concat=[2])",
        ["1:73: unexpected '='; expected '(', ')', ',', '-', '.', '[', ']', '{', ..."],
    ),
    "missing closing parenthesis at the end": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)],\n  normal_concat=[2],\n",
        ["1:9: '(' is never closed"],
    ),
    "index out of range": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 7), ('sep_conv_3x3', 2)],\n"
        "         normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])",
        ["1:77: index 7 is out of range: node 1 of 'normal' may read states 0..2"],
    ),
    "concat index out of range": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2, 6],\n"
        "         reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=range(2, 4))",
        ["1:79: concat index 6 is out of range: 'normal' has states 0..2",
         "2:75: concat index 3 is out of range: 'reduce' has states 0..2"],
    ),
    "missing fields, every error collected": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2],\n"
        "         reduce_concat=[2], reduce_bottleneck=[('foo', 0)])",
        ["1:1: Genotype(...) has no field 'reduce'"],
    ),
    "odd number of pairs": (
        "Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])",
        ["1:17: 'normal' has 1 (op, index) pair; a DARTS cell takes two per node"],
    ),
    "dead node": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)],\n"
        "         normal_concat=[3], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])",
        ["2:25: node 0 of 'normal' (state 2) is neither in 'normal_concat' nor read by a later node"],
    ),
    "errors in both cells": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 2)], normal_concat=[2],\n"
        "         reduce=[('max_pool_3x3', 0), ('max_pol_3x3', 1)], reduce_concat=[2])",
        ["1:56: index 2 is out of range: node 0 of 'normal' may read states 0..1", "2:41: unknown op 'max_pol_3x3'"],
    ),
    "an element that is not a pair": (
        "Genotype(normal=[('sep_conv_3x3', 0), 1.5], normal_concat=[2], reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])",
        ["1:39: expected an (op, index) pair like ('sep_conv_3x3', 0), found the number 1.5"],
    ),
    "unterminated string": ("Genotype(normal=[('sep_conv_3x3, 0)])", ["1:19: unterminated string"]),
    "a dict": ("G = {'normal': []}", ["1:5: expected a Genotype(...) or a NAS-Bench-201 string, found a dict"]),
    "not a genotype": ("PRIMITIVES = ['none']\n", ["1:14: expected a Genotype(...) or a NAS-Bench-201 string, found a list"]),
    "empty": ("# nothing here\n", ["<stdin> is empty; expected a Genotype(...) or a NAS-Bench-201 string"]),
    "nb201 with two nodes": (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|",
        ["1:1: a NAS-Bench-201 string has 3 nodes, found 2"],
    ),
    "nb201 index out of range": (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~2|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
        ["1:47: index 2 is out of range: node 2 may read nodes 0..1"],
    ),
    "nb201 unknown op, quoted": (
        "'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|conv_3x3~1|skip_connect~2|'",
        ["1:67: unknown op 'conv_3x3'"],
    ),
    "nb201 node reads a node twice": (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~0|+|skip_connect~0|",
        ["1:47: node 2 reads node 0 twice"],
    ),
    "nb201 short form, index out of range": (
        "|nor_conv_3x3~0|+|nor_conv_3x3~2|+|skip_connect~0|",
        ["1:32: index 2 is out of range: node 2 may read nodes 0..1"],
    ),
    "Structure with a node that is not a tuple": (
        "Structure([(('nor_conv_3x3', 0),), 'skip_connect', (('skip_connect', 0),)])",
        ["1:37: a node of Structure(...) is a tuple of (op, input node) pairs, found the string 'skip_connect'"],
    ),
    "Structure with two ops on one edge (AutoDL's AllFull_CODE, a supernet)": (
        "Structure([(('skip_connect', 0), ('nor_conv_1x1', 0)), (('skip_connect', 1),), (('skip_connect', 2),)])",
        ["1:51: node 1 reads node 0 twice"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_genotype_reports_line_col_and_message(case):
    text, expected = MALFORMED[case]
    assert errors(text) == expected


def test_unknown_op_hint_suggests_the_nearest_op():
    with pytest.raises(DiagnosticError) as info:
        parse_genotype(MALFORMED["unknown op"][0])
    assert info.value.diagnostics[0].hint.startswith("did you mean 'sep_conv_")


def test_missing_bracket_hint_names_the_open_bracket():
    with pytest.raises(DiagnosticError) as info:
        parse_genotype(MALFORMED["missing closing bracket of a list"][0])
    assert info.value.diagnostics[0].hint == "is a ']' missing? the '[' at 1:17 is still open"


def test_dict_nesting_is_bounded_like_list_nesting_and_an_open_brace_is_named():
    # Dicts (AutoDL's `Networks = {...}`) nest through the recursive tree transformer as lists do: 65
    # levels are refused at the 65th '{' (column 4 + 64 * len("{'a': ") + 1), not a RecursionError.
    deep = "X = " + "{'a': " * 3000 + "1" + "}" * 3000
    assert errors(deep) == [f"1:{4 + 64 * 6 + 1}: brackets nested more than 64 deep"]
    text = 'X = {"a": [1, 2]'
    with pytest.raises(DiagnosticError) as info:
        parse_genotype(text)
    d = info.value.diagnostics[0]
    assert (d.span.line, d.span.col, d.message, d.hint) == (1, 5, "'{' is never closed", "add '}' to close it")


def test_eval_bait_is_an_error_and_never_runs(tmp_path):
    marker = tmp_path / "owned"
    bait = f"__import__('pathlib').Path('{marker}').touch()"
    assert errors(bait) == ["1:22: unexpected '.'; expected '(', ')', ',', '-', '[', ']', '{', '}', ..."]
    assert errors("Genotype(normal=__import__('os'), normal_concat=[2], reduce=[], reduce_concat=[2])") == [
        "1:17: 'normal' must be a list of (op, index) pairs, found a call of '__import__'",
        "1:61: 'reduce' has no nodes",
    ]
    assert not marker.exists()


def test_unknown_name_lists_the_defined_names():
    assert errors(PC_DARTS, "PC_DARTS_cifa") == ["<stdin> defines no genotype named 'PC_DARTS_cifa'"]


def test_deleting_a_character_gives_a_genotype_or_diagnostics_never_another_exception():
    # Every third position of the pair form (all token kinds occur) and every position of an NB201 string.
    for text, step in ((DARTS_V2_PAIRS, 3), ("'" + NB201 + "'", 1)):
        for i in range(0, len(text), step):
            try:
                parse_genotype(text[:i] + text[i + 1 :])
            except DiagnosticError as e:
                assert e.diagnostics and all(d.span is None or d.span.line >= 1 for d in e.diagnostics)


def test_random_edits_of_published_genotypes_give_loadable_specs_or_diagnostics():
    rng = random.Random(0)
    texts = (DARTS_FILE, PC_DARTS, DARTS_V2_PAIRS, "'" + NB201 + "'")
    for _ in range(150):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice("()[],'|~+=#.-0127 \n_abnorsGx") + text[i + rng.randint(0, 1) :]
        try:
            g = parse_genotype(text)
        except DiagnosticError:
            continue
        load(genotype_to_spec_text(g))  # what the parser accepts, the .cell front end and verifier accept


def test_deep_nesting_is_a_diagnostic_not_a_recursion_error():
    assert errors("[" * 5000) == ["1:65: brackets nested more than 64 deep"]


# ---- conversions that must refuse ----------------------------------------------------------------
def test_spec_to_genotype_of_a_search_space_points_at_the_cells():
    with pytest.raises(DiagnosticError) as info:
        spec_to_genotype(load(EXAMPLES / "darts.cell"))
    assert [(d.span.line, d.span.col) for d in info.value.diagnostics] == [(4, 1), (12, 1)]
    assert "search space" in info.value.diagnostics[0].message


def test_spec_to_genotype_rejects_a_node_with_three_inputs():
    text = (
        (EXAMPLES / "darts_v2.cell")
        .read_text()
        .replace(
            "n3 = skip_connect(c_k2) + dil_conv_3x3(n0)",
            "n3 = skip_connect(c_k2) + dil_conv_3x3(n0) + skip_connect(n1)",
        )
    )
    with pytest.raises(DiagnosticError) as info:
        spec_to_genotype(load(text))
    d = info.value.diagnostics[0]
    assert (d.span.line, d.span.col) == (8, 3)
    assert d.message == "node 'n3' of cell 'normal' has 3 inputs; a DARTS genotype takes exactly two"


def test_spec_to_nb201_of_the_search_space_is_refused():
    with pytest.raises(DiagnosticError) as info:
        spec_to_nb201(load(EXAMPLES / "nb201.cell"))
    assert (info.value.diagnostics[0].span.line, info.value.diagnostics[0].span.col) == (5, 1)


def test_genotype_built_in_code_with_a_bad_index_is_refused():
    g = Genotype([("sep_conv_3x3", 0), ("sep_conv_3x3", 3)], [2], [("max_pool_3x3", 0), ("max_pool_3x3", 1)], [2])
    with pytest.raises(DiagnosticError, match="index 3 is out of range"):
        genotype_to_spec_text(g)


def test_genotype_and_nb201_string_refuse_the_other_macro():
    with pytest.raises(DiagnosticError, match="use --macro nb201"):
        genotype_to_spec_text(parse_genotype(NB201), "cifar")
    with pytest.raises(DiagnosticError, match="use --macro cifar or imagenet"):
        genotype_to_spec_text(parse_genotype(DARTS_V2), "nb201")


def test_macro_texts_are_the_three_canonical_networks():
    assert MACROS == ("cifar", "imagenet", "nb201")
    for name in MACROS:
        assert f"network {name}(" in macro_text(name)
    with pytest.raises(DiagnosticError, match="unknown macro network 'cifra'"):
        macro_text("cifra")


def test_import_of_a_file_with_several_genotypes_asks_for_a_name(tmp_path, capsys):
    from nasir.cli import main

    f = tmp_path / "genotypes.py"
    f.write_text(DARTS_FILE)
    assert main(["import", str(f)]) == 2
    err = capsys.readouterr().err
    assert "defines" in err and "genotypes; choose one with --name" in err and "hint: names: NASNet, AmoebaNet" in err
    assert main(["import", str(f), "--name", "DARTS"]) == 0
    assert "# Genotype(normal=[('sep_conv_3x3', 0)" in capsys.readouterr().out


def test_a_genotype_cell_past_the_node_limit_is_refused():
    from nasir import limits

    n = limits.MAX_NODES_PER_CELL + 1
    pairs = ", ".join(f"('skip_connect', {k}), ('skip_connect', {k + 1})" for k in range(n))
    with pytest.raises(DiagnosticError) as e:
        parse_genotype(f"Genotype(normal=[{pairs}], normal_concat=[{n + 1}], reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])")
    assert [d.message for d in e.value.diagnostics] == [f"'normal' has {n:,} nodes; a cell has at most {limits.MAX_NODES_PER_CELL:,}"]


# ---- AutoDL (D-X-Y/AutoDL-Projects): short NB201 strings, genotype files with more than genotypes ----------
def test_autodl_short_nb201_string_reads_missing_edges_as_none():
    # AutoDL's ResNet_CODE (lib/models/cell_searchs/genotypes.py) as a short string: node 3 lists 2 of its 3 inputs.
    short = "|nor_conv_3x3~0|+|nor_conv_3x3~1|+|skip_connect~0|skip_connect~2|"
    full = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"  # filled in by hand
    arch = parse_genotype(short)
    assert str(arch) == full and arch == parse_genotype(full)
    spec = load(genotype_to_spec_text(arch))
    assert spec_to_nb201(spec) == full
    (cell,) = genotype_cells(arch)
    assert sorted((e.src, e.dst, e.op) for e in cell.edges if e.op != "none") == [
        ("n1", "n2", "nor_conv_3x3"), ("n2", "n3", "skip_connect"), ("x", "n1", "nor_conv_3x3"), ("x", "n3", "skip_connect"),
    ]  # fmt: skip
    # edges written out of order in a short node come back in input order
    assert str(parse_genotype("|skip_connect~0|+|avg_pool_3x3~1|+|nor_conv_1x1~2|nor_conv_3x3~0|")) == (
        "|skip_connect~0|+|none~0|avg_pool_3x3~1|+|nor_conv_3x3~0|none~1|nor_conv_1x1~2|"
    )
    # a code-built arch with a short node is filled in the same way
    assert genotype_cells(NB201Arch([[("skip_connect", 0)], [("nor_conv_3x3", 1)], [("skip_connect", 2)]]))[0].edges == (
        genotype_cells(parse_genotype("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|"))[0].edges
    )


# A genotypes.py in the layout of AutoDL's lib/nas_infer_model/DXYs/genotypes.py and lib/models/cell_searchs/
# genotypes.py: imports, a namedtuple with two extra fields, lists and a dict of primitives, a function, a class,
# Genotype(...) calls, Structure(...) calls (NB201 list form), dicts that name genotypes, a trailing function.
AUTODL_FILE = """\
from copy import deepcopy
from collections import namedtuple

Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat connectN connects')

PRIMITIVES_small = [
    'max_pool_3x3',
    'skip_connect',
]

PRIMITIVES = {'small': PRIMITIVES_small,
              'large': PRIMITIVES_small}

def get_combination(space, num):
  combs = []
  for i in range(num):
    combs.append( [(func, i)] for func in space )
  return combs


class Structure:

  def __init__(self, genotype):
    assert isinstance(genotype, list), 'invalid class of genotype : {:}'.format(type(genotype))
    self.nodes = [tuple(deepcopy(x)) for x in genotype]

  def tostr(self):
    return '+'.join('|{:}|'.format('|'.join(x[0] + '~{:}'.format(x[1]) for x in n)) for n in self.nodes)


DARTS_V1 = Genotype(
  normal=[
    (('sep_conv_3x3', 1), ('sep_conv_3x3', 0)), # step 1
    (('skip_connect', 0), ('sep_conv_3x3', 1)), # step 2
    (('skip_connect', 0), ('sep_conv_3x3', 1)), # step 3
    (('sep_conv_3x3', 0), ('skip_connect', 2))  # step 4
  ],
  normal_concat=[2, 3, 4, 5],
  reduce=[
    (('max_pool_3x3', 0), ('max_pool_3x3', 1)), # step 1
    (('skip_connect', 2), ('max_pool_3x3', 0)), # step 2
    (('max_pool_3x3', 0), ('skip_connect', 2)), # step 3
    (('skip_connect', 2), ('avg_pool_3x3', 0))  # step 4
  ],
  reduce_concat=[2, 3, 4, 5],
  connectN=None, connects=None,
)

# DARTS: Differentiable Architecture Search, ICLR 2019
DARTS_V2 = Genotype(
  normal=[
    (('sep_conv_3x3', 0), ('sep_conv_3x3', 1)), # step 1
    (('sep_conv_3x3', 0), ('sep_conv_3x3', 1)), # step 2
    (('sep_conv_3x3', 1), ('skip_connect', 0)), # step 3
    (('skip_connect', 0), ('dil_conv_3x3', 2))  # step 4
  ],
  normal_concat=[2, 3, 4, 5],
  reduce=[
    (('max_pool_3x3', 0), ('max_pool_3x3', 1)), # step 1
    (('skip_connect', 2), ('max_pool_3x3', 1)), # step 2
    (('max_pool_3x3', 0), ('skip_connect', 2)), # step 3
    (('skip_connect', 2), ('max_pool_3x3', 1))  # step 4
  ],
  reduce_concat=[2, 3, 4, 5],
  connectN=None, connects=None,
)

GDAS_V1 = Genotype(
  normal=[
    (('skip_connect', 0), ('skip_connect', 1)),
    (('skip_connect', 0), ('sep_conv_5x5', 2)),
    (('sep_conv_3x3', 3), ('skip_connect', 0)),
    (('sep_conv_5x5', 4), ('sep_conv_3x3', 3))],
  normal_concat=[2, 3, 4, 5],
  reduce=[
    (('sep_conv_5x5', 0), ('sep_conv_3x3', 1)),
    (('sep_conv_5x5', 2), ('sep_conv_5x5', 1)),
    (('dil_conv_5x5', 2), ('sep_conv_3x3', 1)),
    (('sep_conv_5x5', 0), ('sep_conv_5x5', 1))],
  reduce_concat=[2, 3, 4, 5],
  connectN=None, connects=None
)

ResNet_CODE = Structure(
  [(('nor_conv_3x3', 0), ), # node-1
   (('nor_conv_3x3', 1), ), # node-2
   (('skip_connect', 0), ('skip_connect', 2))] # node-3
  )

Networks = {'DARTS_V1': DARTS_V1,
            'DARTS_V2': DARTS_V2,
            'DARTS'   : DARTS_V2,
            'GDAS_V1' : GDAS_V1,
           }

architectures = {'resnet': ResNet_CODE}

if __name__ == '__main__':
  print(Networks['DARTS'])

def build_genotype_from_dict(xdict):
  import pdb; pdb.set_trace()
"""

# DARTS_V2 of the DARTS repository in its flat form, written out from the DARTS paper's Figure 4 (= DARTS_V2 above)
DARTS_V2_FLAT = parse_genotype(DARTS_V2)


def _autodl(name=None):
    from nasir.genotype import collect_notes

    with collect_notes() as notes:
        g = parse_genotype(AUTODL_FILE, name, source_name="genotypes.py")
    return g, notes


def test_autodl_genotype_file_without_name_lists_every_genotype():
    with pytest.raises(DiagnosticError) as e:
        parse_genotype(AUTODL_FILE, source_name="genotypes.py")
    (d,) = e.value.diagnostics
    calls = re.findall(r"^(\w+) = (?:Genotype|Structure)\(", AUTODL_FILE, re.M)  # independent list of definitions
    assert calls == ["DARTS_V1", "DARTS_V2", "GDAS_V1", "ResNet_CODE"]
    assert d.message == f"genotypes.py defines {len(calls)} genotypes; choose one with --name"
    assert d.hint == "names: " + ", ".join(calls) + "; keys of Networks: DARTS_V1, DARTS_V2, DARTS, GDAS_V1; keys of architectures: resnet"


def test_autodl_genotype_file_by_name_by_dict_key_and_by_dict_dot_key():
    g, notes = _autodl("DARTS_V2")
    assert g == DARTS_V2_FLAT  # AutoDL's node-pair form with extra fields = the DARTS repository's flat form
    assert _autodl("DARTS")[0] == g == _autodl("Networks.DARTS")[0]  # a dict key that aliases DARTS_V2
    gdas, _ = _autodl("GDAS_V1")
    assert gdas.normal[:4] == (("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_5x5", 2))
    assert gdas.reduce[4] == ("dil_conv_5x5", 2) and gdas.normal_concat == (2, 3, 4, 5)
    resnet, _ = _autodl("resnet")  # Structure(...) list form, short: missing edges are none
    assert str(resnet) == "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
    assert _autodl("ResNet_CODE")[0] == resnet


def test_autodl_genotype_file_notes_the_skipped_statements_once():
    _, notes = _autodl("DARTS_V1")
    lines = AUTODL_FILE.splitlines()
    starts = [i + 1 for i, line in enumerate(lines) if re.match(r"(def|class|if) ", line)]
    assert len(starts) == 4
    (note,) = notes
    assert note.severity == "note" and note.span.line == starts[0]
    assert note.message.startswith(f"skipped 4 statements of genotypes.py that are not genotype data (lines {starts[0]}-")
    assert note.message.endswith(": class, def, if)")
    for a in starts:
        assert re.search(rf"\b{a}-\d+", note.message)


def test_autodl_genotype_file_keeps_refusing_a_broken_genotype_and_unknown_names():
    broken = AUTODL_FILE.replace("(('sep_conv_5x5', 0), ('sep_conv_3x3', 1)),", "(('sep_conv_5x5', 0) ('sep_conv_3x3', 1)),")
    line = next(i + 1 for i, s in enumerate(broken.splitlines()) if "('sep_conv_5x5', 0) ('sep" in s)
    assert errors(broken, "DARTS_V2") == [f"{line}:26: unexpected '('; expected ')', ','"]
    with pytest.raises(DiagnosticError) as e:
        parse_genotype(AUTODL_FILE, "DARST", source_name="genotypes.py")
    assert e.value.diagnostics[0].message == "genotypes.py defines no genotype named 'DARST'"
    assert e.value.diagnostics[0].hint == "did you mean 'DARTS'?"
    with pytest.raises(DiagnosticError) as e:
        parse_genotype(AUTODL_FILE, "Networks", source_name="genotypes.py")
    assert e.value.diagnostics[0].hint == "choose one of its keys: --name DARTS_V1, DARTS_V2, DARTS, GDAS_V1"


def test_import_cli_takes_a_name_from_an_autodl_file_and_prints_the_note(tmp_path, capsys):
    from nasir.cli import main

    f = tmp_path / "genotypes.py"
    f.write_text(AUTODL_FILE)
    assert main(["import", str(f)]) == 2
    err = capsys.readouterr().err
    assert "defines 4 genotypes; choose one with --name" in err and "keys of Networks: DARTS_V1" in err
    assert main(["import", str(f), "--name", "GDAS_V1"]) == 0
    out, err = capsys.readouterr()
    assert out.count("note: skipped 4 statements") == 0 and err.count("note: skipped 4 statements") == 1
    assert load(out).cell("normal") == genotype_cells(parse_genotype(AUTODL_FILE, "GDAS_V1"))[0]


# AutoDL's SETN (DXYs/genotypes.py) uses conv_3x1_1x3, an op HB adds in this session.
SETN = """\
SETN = Genotype(
  normal=[
    (('skip_connect', 0), ('sep_conv_5x5', 1)),
    (('sep_conv_5x5', 0), ('sep_conv_3x3', 1)),
    (('sep_conv_5x5', 1), ('sep_conv_5x5', 3)),
    (('max_pool_3x3', 1), ('conv_3x1_1x3', 4))],
  normal_concat=[2, 3, 4, 5],
  reduce=[
    (('sep_conv_3x3', 0), ('sep_conv_5x5', 1)),
    (('avg_pool_3x3', 0), ('sep_conv_5x5', 1)),
    (('avg_pool_3x3', 0), ('sep_conv_5x5', 1)),
    (('avg_pool_3x3', 0), ('skip_connect', 1))],
  reduce_concat=[2, 3, 4, 5],
  connectN=None, connects=None
)
"""


def test_autodl_setn_imports():
    text = AUTODL_FILE.replace("ResNet_CODE = Structure(", SETN + "\nResNet_CODE = Structure(")
    setn = parse_genotype(text, "SETN")
    assert setn.normal[-1] == ("conv_3x1_1x3", 4) and setn.reduce[-1] == ("skip_connect", 1)
    load(genotype_to_spec_text(setn))


def test_decorated_definitions_and_docstrings_are_skipped_as_one_statement_each():
    from nasir.genotype import collect_notes

    text = ('"""Genotypes of a paper.\n\n|not~0| an NB201 string in prose\n"""\n'
            "@register\n@other(1)\ndef build(x):\n    return x\n\n" + DARTS_V2 + "\nx = a + b\n")  # fmt: skip
    with collect_notes() as notes:
        assert parse_genotype(text, source_name="g.py") == parse_genotype(DARTS_V2)
    (note,) = notes
    # the docstring (lines 1-4), the decorated function (5-8) and the expression (11)
    assert note.message == "skipped 3 statements of g.py that are not genotype data (lines 1-4, 5-8, 11: decorated, docstring, other)"


def test_an_unknown_name_offers_the_genotypes_only_aliases_followed():
    # The hint used to list every assigned name (`Genotype`, `PRIMITIVES`, `Networks`...): not choices for --name.
    with pytest.raises(DiagnosticError) as e:
        parse_genotype(AUTODL_FILE, "SETN", source_name="genotypes.py")
    # ResNet_CODE is an NB201 Structure; DARTS a key of Networks, resnet one of architectures
    assert e.value.diagnostics[0].hint == "genotypes: DARTS_V1, DARTS_V2, GDAS_V1, ResNet_CODE, DARTS, resnet"
    pair = "[('skip_connect', 0), ('skip_connect', 1)]"
    text = (f"PRIMITIVES = ['none']\nA = Genotype(normal={pair}, normal_concat=[2], reduce={pair}, reduce_concat=[2])\n"
            "B = A\nC = B\n")  # fmt: skip
    with pytest.raises(DiagnosticError) as e:
        parse_genotype(text, "X", source_name="g.py")
    assert e.value.diagnostics[0].hint == "genotypes: A, B, C"
