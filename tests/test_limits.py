"""Issue 14, items 11-13: include resolution, input limits, linear-time positions, the caret window."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
from helpers import EXAMPLES, ROOT

from nasir import limits
from nasir.api import load
from nasir.cli import main
from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.source import SourceFile

CELL = "cell c {\n  inputs a\n  nodes n0\n  edges a -> n0 : skip_connect\n  output n0\n}\n"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def messages(e: DiagnosticError) -> list[str]:
    return [d.message for d in e.diagnostics]


# ---- 11: includes -------------------------------------------------------------------------------------
def test_include_outside_the_spec_directory_is_refused_unless_allowed(tmp_path, capsys):
    (tmp_path / "ops.cell").write_text("opset small = {skip_connect, max_pool_3x3}\n")
    proj = tmp_path / "proj"
    proj.mkdir()
    main_cell = proj / "main.cell"
    main_cell.write_text('include "../ops.cell"\n' + CELL.replace("skip_connect", "choice(small)"))
    with pytest.raises(DiagnosticError) as e:
        load(main_cell)
    d = e.value.diagnostics[0]
    assert (d.span.line, d.span.col) == (1, 1) and "'../ops.cell' is outside" in d.message
    assert "--allow-include-outside" in d.hint
    spec = load(main_cell, allow_include_outside=True)  # the API argument
    assert spec.cells[0].edges[0].choice.ops == ("skip_connect", "max_pool_3x3")
    assert run(capsys, "check", main_cell)[0] == 2
    assert run(capsys, "check", main_cell, "--allow-include-outside")[0] == 0
    # the ambient setting does not outlive the command
    assert limits.ALLOW_INCLUDE_OUTSIDE.get() is False


def test_include_of_an_absolute_path_outside_is_refused_without_reading(tmp_path):
    spec = tmp_path / "x.cell"
    spec.write_text('include "/etc/passwd"\n' + CELL)
    with pytest.raises(DiagnosticError) as e:
        load(spec)
    assert messages(e.value) == ["'/etc/passwd' is outside " + str(tmp_path.resolve()) + ", the directory of the spec"]
    assert "root:" not in e.value.render()


def test_include_of_a_symlink_that_leaves_the_tree_is_refused(tmp_path):
    outside = tmp_path / "outside.cell"
    outside.write_text("opset s = {skip_connect}\n")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "link.cell").symlink_to(outside)
    (proj / "main.cell").write_text('include "link.cell"\n' + CELL)
    with pytest.raises(DiagnosticError) as e:
        load(proj / "main.cell")
    assert "'link.cell' is outside" in messages(e.value)[0]


def test_only_cell_files_are_included_and_other_files_are_never_quoted(tmp_path, capsys):
    (tmp_path / "secret.txt").write_text("password = hunter2 TOPSECRET\n")
    spec = tmp_path / "x.cell"
    spec.write_text('include "secret.txt"\n' + CELL)
    with pytest.raises(DiagnosticError) as e:
        load(spec)
    assert messages(e.value) == ["cannot include 'secret.txt': only .cell files are included"]
    # A file given directly that is not a .cell file: the place is named, its content never printed.
    code, _, err = run(capsys, "check", tmp_path / "secret.txt")
    assert code == 2 and f"{tmp_path / 'secret.txt'}:1:1: error: unexpected text; this is not .cell text" in err
    assert "hunter2" not in err and "TOPSECRET" not in err and "password" not in err


def test_a_cell_include_is_still_quoted(tmp_path):
    (tmp_path / "bad.cell").write_text("opset s = {skip_conect}\n")
    spec = tmp_path / "x.cell"
    spec.write_text('include "bad.cell"\n' + CELL)
    with pytest.raises(DiagnosticError) as e:
        load(spec)
    assert "   1 | opset s = {skip_conect}" in e.value.render()


def test_only_regular_files_are_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.cell")  # noqa: S108
    (tmp_path / "dir.cell").mkdir()
    spec = tmp_path / "x.cell"
    spec.write_text('include "pipe.cell"\ninclude "dir.cell"\n' + CELL)
    # A FIFO without a writer blocked open() forever: run in a child with a deadline.
    code = "from nasir.api import load\nimport sys\ntry:\n load(sys.argv[1])\nexcept Exception as e:\n print(e)\n"
    done = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, timeout=60)
    assert "cannot include 'pipe.cell': a FIFO; only regular files are read" in done.stdout
    assert "cannot include 'dir.cell': a directory; only regular files are read" in done.stdout


def test_dev_zero_is_refused_even_when_outside_is_allowed(tmp_path, capsys):
    spec = tmp_path / "x.cell"
    (tmp_path / "zero.cell").symlink_to("/dev/zero")
    spec.write_text('include "zero.cell"\n' + CELL)
    with pytest.raises(DiagnosticError) as e:
        load(spec, allow_include_outside=True)
    assert messages(e.value) == ["cannot include 'zero.cell': not a regular file"]
    code, _, err = run(capsys, "check", "/dev/zero")
    assert code == 2 and "cannot read '/dev/zero': not a regular file" in err


def test_a_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_SOURCE_BYTES", 100)
    spec = tmp_path / "x.cell"
    spec.write_text(CELL + "#" * 200 + "\n")
    with pytest.raises(DiagnosticError) as e:
        load(spec)
    assert messages(e.value) == [f"cannot read '{spec}': {len(spec.read_text()):,} bytes; a spec is at most 100"]


# ---- 12: limits -------------------------------------------------------------------------------------------
def test_a_huge_node_range_is_refused_at_the_range():
    with pytest.raises(DiagnosticError) as e:
        load("cell c { inputs x nodes n0..n100000 edges * -> * : skip_connect output n0 }")
    d = e.value.diagnostics[0]
    assert d.message == f"range 'n0..n100000' has 100,001 nodes; a range has at most {limits.MAX_RANGE:,}"
    assert (d.span.line, d.span.col) == (1, 25)


def test_many_small_ranges_hit_the_nodes_per_cell_limit():
    ranges = ", ".join(f"m{k}_0..m{k}_{limits.MAX_RANGE - 1}" for k in range(limits.MAX_NODES_PER_CELL // limits.MAX_RANGE + 1))
    with pytest.raises(DiagnosticError) as e:
        load(f"cell c {{ inputs x nodes {ranges} edges * -> * : skip_connect output m0_0 }}")
    n = limits.MAX_RANGE * (limits.MAX_NODES_PER_CELL // limits.MAX_RANGE + 1)
    assert f"cell 'c' has {n:,} nodes; a cell has at most {limits.MAX_NODES_PER_CELL:,}" in messages(e.value)


def test_an_edge_pattern_beyond_the_edge_limit_is_refused():
    n = 150  # a full pattern over 2 inputs and 150 nodes: node k reads 2 + k states, 2 * 150 + 149 * 150 / 2 = 11,475
    with pytest.raises(DiagnosticError) as e:
        load(f"cell c {{ inputs a, b nodes n0..n{n - 1} edges * -> * : skip_connect output n{n - 1} }}")
    assert messages(e.value) == [f"this edge pattern makes 11,475 edges; a cell has at most {limits.MAX_EDGES_PER_CELL:,}"]


@pytest.mark.parametrize("expr", [" + ".join(["1"] * 600), "-" * 600 + "1", " * ".join(["C"] * 600)])
def test_deep_expressions_are_a_diagnostic_not_a_recursion_error(expr):
    with pytest.raises(DiagnosticError) as e:
        load(f"network n(C = 2, D = {expr}) {{ stack 2 cells(C): c }}")
    d = e.value.diagnostics[0]
    assert d.message.startswith("expression nested ") and d.message.endswith(f"deep; at most {limits.MAX_EXPR_DEPTH}")
    assert (d.span.line, d.span.col) == (1, 22)


def test_deep_set_expressions_are_a_diagnostic():
    with pytest.raises(DiagnosticError) as e:
        load("opset s = " + " + ".join(["skip_connect"] * 600) + "\n")
    assert messages(e.value) == [f"expression nested 599 levels deep; at most {limits.MAX_EXPR_DEPTH}"]


def test_an_expression_at_the_depth_limit_still_works():
    depth = limits.MAX_EXPR_DEPTH
    spec = load(textwrap.dedent(f"""
        cell c {{
          inputs a
          n0 = skip_connect(a)
          output n0
        }}
        network n(C = {' + '.join(['1'] * (depth + 1))}) {{
          stem conv3x3(C), bn
          stack 1 cells(C): c
          head global_avg_pool, linear(2)
        }}
        """))
    from nasir.macro import evaluate

    assert evaluate(spec.networks[0].params[0].default, {}) == depth + 1


def test_seed_range_is_checked_where_seeds_are_parsed(capsys):
    assert limits.seed("0") == 0 and limits.seed(str(2**32 - 1)) == 2**32 - 1
    for bad in ("99999999999999999999", "-1", str(2**32), "1.5", "x"):
        with pytest.raises(Exception) as e:
            limits.seed(bad)
        assert type(e.value).__name__ == "ArgumentTypeError"
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "-t", "torch", "-o", "m.py", "--seed", "99999999999999999999")
    assert code == 2
    assert "error: argument --seed: seed 99999999999999999999 is out of range 0..4294967295" in err and "Traceback" not in err


def test_network_sizes_beyond_the_limits_are_diagnostics(capsys):
    code, _, err = run(capsys, "info", EXAMPLES / "darts_v2.cell", "--set", f"C={limits.MAX_CHANNELS + 1}")
    assert code == 2 and f"channels must be at most {limits.MAX_CHANNELS:,}" in err


# ---- 13: positions and the caret window -------------------------------------------------------------------
def test_positions_and_lines_agree_with_a_naive_count():
    rng = random.Random(0)
    text = "".join(rng.choice("ab \n\r\t#") for _ in range(3000))
    src = SourceFile("t.cell", text)
    for offset in range(0, len(text) + 1, 7):
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        assert src.position(offset) == (line, col)
    lines = text.split("\n")
    for n in range(1, len(lines) + 1):
        assert src.line(n) == lines[n - 1].rstrip("\r")
    assert src.line(0) == src.line(len(lines) + 1) == ""


def test_the_caret_renderer_cuts_long_lines_around_the_caret():
    line = "x" * 5_000_000 + "ERR" + "y" * 5_000_000
    src = SourceFile("big.cell", line + "\n")
    at = 5_000_000
    text = Diagnostic("bad", src.span(at, at + 3)).render()
    shown, caret = text.splitlines()[1:3]
    assert len(shown) < 2 * limits_window() and shown.startswith("   1 | ...") and shown.endswith("...")
    # the caret still stands under ERR
    assert shown[caret.index("^") : caret.index("^") + 3] == "ERR" and caret.endswith("^~~")


def test_short_lines_are_shown_whole():
    src = SourceFile("t.cell", "cell c {\n  inputs x\n}\n")
    text = Diagnostic("bad", src.span(11, 17)).render()
    assert text.splitlines()[1:] == ["   2 |   inputs x", "     |   ^~~~~~"]


def limits_window() -> int:
    from nasir.diagnostics import LINE_WINDOW

    return LINE_WINDOW


def test_readme_example_spec_still_parses():
    assert load(ROOT / "examples" / "digits.cell").network().name == "digits"


# ---- 12: nasir info computes sizes without a forward pass on real tensors -----------------------------------
def test_info_counts_equal_a_real_build_and_scale_to_huge_inputs_without_allocating():
    from torch import nn

    from nasir.lower import build_from_plan, resolve
    from nasir.measure import info
    from nasir.targets.blocks import count_macs, count_params

    text = (EXAMPLES / "darts_v2.cell").read_text()
    tiny = {"C": 4, "layers": 5}
    spec, plan = resolve(load(text, name="v2.cell"), tiny)
    model = build_from_plan(spec, plan)  # real tensors on the CPU: the independent count
    d = info(spec, tiny)
    assert d["params"] == count_params(model) and d["macs"] == count_macs(model, plan.input)
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    # 640 times the side: every feature map is 640 x 640 times larger (32 -> 20480 halves evenly), the
    # classifier after global pooling is not. A real forward pass would need 5 GB for the input alone.
    d_big = info(load(text.replace("input (3, 32, 32)", "input (3, 20480, 20480)"), name="v2.cell"), tiny)
    assert d_big["params"] == d["params"]
    assert d_big["macs"] - linear == 640**2 * (d["macs"] - linear)
    wide = info(load(text, name="v2.cell"), {"C": 100_000, "layers": 2})
    assert wide["params"] > 10**10  # 40+ GB as float32 weights: counted, never allocated


def test_a_file_included_twice_or_through_a_diamond_is_read_once(tmp_path):
    # f0 includes f1 twice, f1 includes f2 twice, ...: 2**30 reads before; now each file once.
    depth = 30
    for k in range(depth):
        (tmp_path / f"f{k}.cell").write_text(f'include "f{k + 1}.cell"\ninclude "f{k + 1}.cell"\n')
    (tmp_path / f"f{depth}.cell").write_text("opset s = {skip_connect}\n")
    (tmp_path / "main.cell").write_text('include "f0.cell"\n' + CELL.replace("skip_connect", "choice(s)"))
    spec = load(tmp_path / "main.cell")
    assert [o.name for o in spec.opsets] == ["s"]  # once, not "defined twice"


def test_the_number_of_included_files_is_limited(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_INCLUDES", 3)
    for k in range(5):
        (tmp_path / f"f{k}.cell").write_text(f"opset s{k} = {{skip_connect}}\n")
    (tmp_path / "main.cell").write_text("".join(f'include "f{k}.cell"\n' for k in range(5)) + CELL)
    with pytest.raises(DiagnosticError) as e:
        load(tmp_path / "main.cell")
    assert messages(e.value) == ["cannot include 'f3.cell': a spec includes at most 3 files",
                                 "cannot include 'f4.cell': a spec includes at most 3 files"]  # fmt: skip


def test_an_include_path_with_a_nul_character_is_a_diagnostic(tmp_path):
    spec = tmp_path / "x.cell"
    spec.write_text('include "a\x00b.cell"\n' + CELL)
    with pytest.raises(DiagnosticError) as e:
        load(spec)
    assert messages(e.value) == ["an include path cannot contain a NUL character"]


def test_the_library_checks_seeds_too(tmp_path):
    from nasir.lower import compile as compile_spec

    with pytest.raises(DiagnosticError) as e:
        compile_spec(EXAMPLES / "darts_v2.cell", "torch", tmp_path / "m.py", seed=10**20, overrides=["C=4", "layers=2"])
    assert messages(e.value) == [f"seed must be a whole number in 0..{limits.MAX_SEED}, got {10**20}"]
    assert not (tmp_path / "m.py").exists()
