"""`nasir import GENOTYPE --macro-from FILE.cell`: a genotype's cells in the user's own network (issue 16).

The cells are checked against the hand-written derived examples (examples/darts_v2.cell is DARTS_V2 as
the authors' genotypes.py gives it), the network against the user's file as nasir loads it on its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nasir import ops
from nasir.api import load
from nasir.cli import main
from nasir.diagnostics import DiagnosticError
from nasir.lower import import_genotype

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

DARTS_V2 = (
    "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
NB201 = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


@pytest.fixture
def files(tmp_path):
    for name in ("digits.cell", "ops.cell", "nb201.cell", "ptb.cell"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    (tmp_path / "darts_v2.py").write_text(DARTS_V2 + "\n")
    (tmp_path / "nb201.txt").write_text(NB201 + "\n")
    return tmp_path


def errors(fn) -> list[str]:
    with pytest.raises(DiagnosticError) as info:
        fn()
    return [f"{Path(d.span.file).name}:{d.span.line}:{d.span.col}: {d.message}" if d.span else d.message
            for d in info.value.diagnostics]  # fmt: skip


def at(text: str, line_with: str, word: str) -> tuple[int, int]:
    """1-based line and column of `word` on the first line that contains `line_with`."""
    for k, line in enumerate(text.splitlines(), start=1):
        if line_with in line:
            return k, line.index(word, line.index(line_with)) + 1
    raise AssertionError(line_with)


def test_darts_genotype_in_the_digits_network_has_the_examples_cells_and_the_users_network(files):
    text = import_genotype(files / "darts_v2.py", macro_from=files / "digits.cell")
    out = load(text)
    user = load(files / "digits.cell")
    reference = load(EXAMPLES / "darts_v2.cell")
    assert out.cells == reference.cells  # DARTS_V2's normal and reduce cells, as the example writes them
    assert out.networks == user.networks
    assert user.search is not None and out.search is None  # a derived network has nothing to search
    assert not out.is_search_space
    # the user's network block is there verbatim; the op sets and their include served the search cells only
    network_block = (files / "digits.cell").read_text().split("\n\n")[3]
    assert network_block.startswith("network digits(") and network_block in text
    assert 'include "' not in text and "opset" not in text and "choice" not in text and "search {" not in text


def test_the_search_blocks_limits_do_not_reach_the_derived_network(files):
    # DARTS_V2's normal nodes n0 and n1 read only sep_conv_3x3: with the search block kept, this limit
    # (meant for the search) would make the verifier refuse the derived network.
    lim = files / "lim.cell"
    lim.write_text((files / "digits.cell").read_text().replace("  batch_size 64\n", "  batch_size 64\n  limit sep_conv_3x3 <= 0 per cell\n"))
    load(lim)
    assert load(import_genotype(files / "darts_v2.py", macro_from=lim)).cells == load(EXAMPLES / "darts_v2.cell").cells


def test_nb201_string_in_the_nb201_example_equals_the_canonical_import(files):
    text = import_genotype(files / "nb201.txt", macro_from=files / "nb201.cell")
    canonical = load(import_genotype(files / "nb201.txt", macro="nb201"))
    out = load(text)
    assert out.cells == canonical.cells and out.networks == canonical.networks


def test_recurrent_genotype_runs_in_the_users_language_model(files):
    g = "DARTS_V2 = Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), " \
        "('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))\n"  # fmt: skip
    (files / "rnn.py").write_text(g)
    out = load(import_genotype(files / "rnn.py", macro_from=files / "ptb.cell"))
    (cell,) = out.cells
    assert [(e.src, e.dst, e.op) for e in cell.edges] == [
        ("s0", "s1", "sigmoid"), ("s1", "s2", "relu"), ("s1", "s3", "relu"), ("s1", "s4", "identity"),
        ("s2", "s5", "tanh"), ("s5", "s6", "sigmoid"), ("s3", "s7", "tanh"), ("s5", "s8", "relu"),
    ]  # fmt: skip
    assert out.networks == load(files / "ptb.cell").networks


def test_cells_the_genotype_cannot_provide_are_errors_at_the_users_stack(files):
    text = (files / "digits.cell").read_text()
    line, col_n = at(text, "stack layers", "normal")
    _, col_r = at(text, "stack layers", "reduce")
    assert errors(lambda: import_genotype(files / "nb201.txt", macro_from=files / "digits.cell")) == [
        f"digits.cell:{line}:{col_n}: network 'digits' stacks cell 'normal', which the NAS-Bench-201 string does not provide (it provides nbcell)",
        f"digits.cell:{line}:{col_r}: network 'digits' stacks cell 'reduce', which the NAS-Bench-201 string does not provide (it provides nbcell)",
    ]  # fmt: skip


def test_the_combination_is_verified_the_genotypes_reduce_cell_in_a_normal_role(files):
    # On its own this file is valid: its cell 'reduce' is an ordinary cell. The genotype's 'reduce'
    # reduces, so stacking it as a normal cell is an error at the user's stack.
    mine = files / "mine.cell"
    mine.write_text(
        'include "ops.cell"\n'
        "cell reduce {\n  inputs c_k2, c_k1\n  nodes n0\n  edges * -> n0 : choice(darts)\n  output concat(n0)\n}\n"
        "network mine(C = 4) {\n  input (3, 8, 8)\n  stem conv3x3(C), bn\n  stack 2 cells(C): reduce\n"
        "  head global_avg_pool, linear(10)\n}\n"
    )  # fmt: skip
    load(mine)
    assert errors(lambda: import_genotype(files / "darts_v2.py", macro_from=mine)) == [
        "mine.cell:11:3: inconsistent strides: cell 'reduce' is a reduction cell (stride 2) but is stacked as a normal cell"
    ]


def test_users_fixed_cells_are_kept_and_search_cells_it_still_stacks_are_errors(files):
    mine = files / "mine.cell"
    body = (
        'include "ops.cell"\n'
        "# a hand-made reduction, declared before the cell it is like\n"
        "cell fixed like pre {\n  stride 2 from inputs\n}\n"
        "cell pre {\n  inputs c_k2, c_k1\n  nodes n0\n  edges c_k1 -> n0 : skip_connect\n"
        "  edges c_k2 -> n0 : avg_pool_3x3\n  output concat(n0)\n}\n"
        "cell normal {\n  inputs c_k2, c_k1\n  nodes n0..n1\n  edges * -> n* : choice(darts)\n  output concat(n0..n1)\n"
        "  keep 2 inputs per node\n}\n"
        "# my network\n"
        "network mine(C = 4, layers = 5) {  # after the brace\n  input (3, 16, 16)\n  stem conv3x3(2 * C), bn\n"
        "  stack layers cells(C): normal, fixed at 1/2\n  head global_avg_pool, linear(10)\n} # the end\n"
    )  # fmt: skip
    mine.write_text(body)
    user = load(mine)
    out = load(import_genotype(files / "darts_v2.py", macro_from=mine, overrides=["C=6"]))
    assert out.cell("fixed") == user.cell("fixed")  # resolved through `like` and printed whole
    assert out.cell("normal") == load(EXAMPLES / "darts_v2.cell").cell("normal")
    assert out.cell("pre") is None  # not stacked: left out
    assert [p.default.value for p in out.network().params] == [6, 5]  # --set C=6 became the default
    assert out.network().body == user.network().body
    text = import_genotype(files / "darts_v2.py", macro_from=mine)
    assert "# my network\nnetwork mine(C = 4, layers = 5) {  # after the brace\n" in text and "} # the end\n" in text
    # a search-space cell the genotype does not replace cannot stay in a derived network
    mine.write_text(body.replace("cell normal {", "cell other {").replace("normal, fixed", "other, fixed"))
    line, col = at(mine.read_text(), "stack layers", "other")
    assert errors(lambda: import_genotype(files / "darts_v2.py", macro_from=mine)) == [
        f"mine.cell:{line}:{col}: network 'mine' stacks cell 'other', which the DARTS genotype does not provide "
        "(it provides normal, reduce)"
    ]


def test_a_file_with_only_a_network_or_a_network_from_an_include_is_a_macro(files):
    network_block = (files / "digits.cell").read_text().split("\n\n")[3] + "\n"
    (files / "net.cell").write_text(network_block)  # invalid on its own: its cells come from the genotype
    with pytest.raises(DiagnosticError, match="stacks unknown cell 'normal'"):
        load(files / "net.cell")
    text = import_genotype(files / "darts_v2.py", macro_from=files / "net.cell")
    assert network_block in text
    assert load(text).cells == load(EXAMPLES / "darts_v2.cell").cells
    mine = files / "mine.cell"
    mine.write_text('include "net.cell"\n')
    text = import_genotype(files / "darts_v2.py", macro_from=mine)
    assert 'include "' not in text  # the network is printed from the IR: the output needs no other file
    assert load(text).networks == load(files / "digits.cell").networks


def test_the_users_op_file_serves_the_genotype_and_is_named_relative_to_the_output(files):
    # The macro file names the user's ops (docs/ops.md); the genotype uses one of them, which only
    # resolves once the macro file is loaded. The output names the op file from where it is written.
    shutil.copy(EXAMPLES / "myops.py", files / "myops.py")
    network_block = (files / "digits.cell").read_text().split("\n\n")[3] + "\n"
    (files / "mine.cell").write_text('ops "myops.py"\n\n' + network_block)
    (files / "blur.py").write_text(DARTS_V2.replace("('dil_conv_3x3', 2)", "('blur', 2)") + "\n")
    (files / "out").mkdir()
    out = files / "out" / "arch.cell"
    with ops.scope():
        assert main(["import", str(files / "blur.py"), "--macro-from", str(files / "mine.cell"), "--set", "C=4",
                     "-o", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    assert text.splitlines()[2] == 'ops "../myops.py"'
    assert main(["check", str(out), "--allow-include-outside"]) == 0
    with ops.scope():
        spec = load(out, allow_include_outside=True)
    assert spec.cell("normal").edges[-1].op == "blur" and spec.network().params[0].default.value == 4


def test_cli_macro_from_writes_the_file_and_refuses_macro_too_and_a_file_without_network(files, capsys):
    out = files / "out.cell"
    assert main(["import", str(files / "darts_v2.py"), "--macro-from", str(files / "digits.cell"), "-o", str(out)]) == 0
    assert main(["check", str(out)]) == 0
    capsys.readouterr()
    assert main(["import", str(files / "darts_v2.py"), "--macro-from", str(files / "digits.cell"), "--macro", "cifar"]) == 2
    err = capsys.readouterr().err
    assert "<command line>:1:" in err and "error: --macro-from and --macro both name the network; give one" in err
    (files / "cells.cell").write_text("cell a {\n  inputs x\n  nodes n1\n  edges x -> n1 : skip_connect\n  output n1\n}\n")
    assert main(["import", str(files / "darts_v2.py"), "--macro-from", str(files / "cells.cell")]) == 2
    assert f"{files / 'cells.cell'}:1:1: error: '{files / 'cells.cell'}' declares no network" in capsys.readouterr().err
