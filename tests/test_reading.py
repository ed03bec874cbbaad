"""Reading input (issue 16): `nasir check -` reads standard input as `nasir import -` does, and a UTF-8
byte-order mark is accepted at the start of a .cell file, an included file, an op file and a genotype
file, without moving any diagnostic's column. Positions in the expectations are counted by hand."""

from __future__ import annotations

import io

import pytest
from helpers import EXAMPLES

from nasir import limits
from nasir.api import load
from nasir.cli import main

BOM = b"\xef\xbb\xbf"
# the error is at 'bogus_op': 44 characters precede it on line 2, so column 45
BROKEN = "include \"ops.cell\"\ncell x { inputs a  nodes n0  edges a -> n0: bogus_op  output n0 }\n"
SMALL = (
    'include "ops.cell"\n'
    "cell c { inputs x, y  nodes n0, n1  edges * -> n* : choice(darts)  output concat(n0, n1) }\n"
)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def stdin_bytes(monkeypatch, data: bytes):
    """Standard input as a program gets it: a text stream over bytes (`sys.stdin.buffer`)."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


@pytest.fixture
def ops_here(tmp_path, monkeypatch):
    """The current directory holds ops.cell (what SMALL and BROKEN include)."""
    (tmp_path / "ops.cell").write_bytes((EXAMPLES / "ops.cell").read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_dash_reads_stdin_and_its_includes_resolve_from_the_current_directory(capsys, monkeypatch, ops_here):
    stdin_bytes(monkeypatch, SMALL.encode())
    code, _, err = run(capsys, "check", "-")
    assert code == 0 and "ok: 1 file checked" in err, err


def test_check_dash_names_stdin_in_diagnostics_with_the_files_positions(capsys, monkeypatch, ops_here):
    (ops_here / "broken.cell").write_text(BROKEN)
    stdin_bytes(monkeypatch, BROKEN.encode())
    code, _, err = run(capsys, "check", "-", "broken.cell")
    assert code == 2
    assert "<stdin>:2:45: error: unknown op 'bogus_op'" in err
    assert "broken.cell:2:45: error: unknown op 'bogus_op'" in err
    assert "Traceback" not in err


def test_check_dash_twice_is_refused(capsys, monkeypatch):
    stdin_bytes(monkeypatch, b"")
    code, _, err = run(capsys, "check", "-", "-")
    assert code == 2 and "'-' (standard input) can be checked once" in err


def test_check_dash_on_a_one_line_stdin_without_newline(capsys, monkeypatch, ops_here):
    # no newline and no '{': still text from stdin, not a path
    stdin_bytes(monkeypatch, b'include "ops.cell"')
    code, _, err = run(capsys, "check", "-")
    assert code == 0, err
    stdin_bytes(monkeypatch, b'include "nope.cell"')
    code, _, err = run(capsys, "check", "-")
    assert code == 2 and "<stdin>:1:1: error: cannot include 'nope.cell'" in err


def test_check_dash_with_a_text_stdin_and_over_the_size_limit(capsys, monkeypatch, ops_here):
    monkeypatch.setattr("sys.stdin", io.StringIO("\ufeff" + SMALL))  # no .buffer underneath
    code, _, err = run(capsys, "check", "-")
    assert code == 0, err
    monkeypatch.setattr(limits, "MAX_SOURCE_BYTES", len(SMALL.encode()) - 1)
    stdin_bytes(monkeypatch, SMALL.encode())
    code, _, err = run(capsys, "check", "-")
    assert code == 2 and f"cannot read <stdin>: more than {len(SMALL) - 1:,} bytes" in err


def test_check_dash_refuses_bytes_that_are_not_utf8(capsys, monkeypatch):
    stdin_bytes(monkeypatch, b"cell \xff {}\n")
    code, _, err = run(capsys, "check", "-")
    assert code == 2 and "cannot read <stdin>: not UTF-8 text" in err and "Traceback" not in err


def test_stdin_with_a_bom_keeps_columns(capsys, monkeypatch, ops_here):
    stdin_bytes(monkeypatch, BOM + BROKEN.encode())
    code, _, err = run(capsys, "check", "-")
    assert code == 2 and "<stdin>:2:45: error: unknown op 'bogus_op'" in err


def test_a_bom_at_the_start_of_a_cell_file_is_dropped_and_columns_stay(tmp_path, capsys):
    plain, marked = tmp_path / "plain.cell", tmp_path / "marked.cell"
    (tmp_path / "ops.cell").write_bytes((EXAMPLES / "ops.cell").read_bytes())
    plain.write_bytes(SMALL.encode())
    marked.write_bytes(BOM + SMALL.encode())
    assert load(marked) == load(plain)
    # an error on line 1: column 1 is the first character after the mark
    marked.write_bytes(BOM + b"cel x {}\n")
    code, _, err = run(capsys, "check", marked)
    assert code == 2 and f"{marked}:1:1: error: unexpected 'cel'" in err, err
    assert "\ufeff" not in err


def test_a_bom_in_an_included_file(tmp_path, capsys):
    (tmp_path / "ops.cell").write_bytes(BOM + (EXAMPLES / "ops.cell").read_bytes())
    main_cell = tmp_path / "main.cell"
    main_cell.write_text(SMALL)
    assert load(main_cell).opset("darts") is not None
    (tmp_path / "bad.cell").write_bytes(BOM + b"opset s = {skip_conect}\n")  # the op name starts at column 12
    main_cell.write_text('include "bad.cell"\n')
    code, _, err = run(capsys, "check", main_cell)
    assert code == 2 and "bad.cell:1:12: error: unknown op 'skip_conect'" in err, err


def test_a_bom_in_an_op_file(tmp_path):
    (tmp_path / "mine.py").write_bytes(BOM + b"from nasir.ops import op\n\n\n"
                                       b"@op('bom_id', parameter_free=True)\ndef ident(C, stride, affine):\n"
                                       b"    from torch import nn\n    return nn.Identity()\n")  # fmt: skip
    spec_file = tmp_path / "s.cell"
    spec_file.write_text('ops "mine.py"\nopset o = {bom_id, skip_connect}\n')
    assert load(spec_file).opset("o").ops == ("bom_id", "skip_connect")


def test_a_bom_in_a_genotype_file(tmp_path, capsys):
    from nasir.genotype import read_genotype

    arch = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(arch + "\n")
    marked.write_bytes(BOM + arch.encode() + b"\n")
    assert read_genotype(marked) == read_genotype(plain)
    out = tmp_path / "nb.cell"
    code, _, err = run(capsys, "import", marked, "--macro", "nb201", "-o", out)
    assert code == 0, err
    code, printed, _ = run(capsys, "export-genotype", out)
    assert code == 0 and printed.strip() == arch


def test_import_dash_reads_stdin_with_a_bom_as_the_same_genotype():
    import subprocess
    import sys

    arch = b"|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|\n"
    cmd = [sys.executable, "-m", "nasir", "import", "-", "--macro", "nb201"]
    plain = subprocess.run(cmd, input=arch, capture_output=True, check=True).stdout
    marked = subprocess.run(cmd, input=b"\xef\xbb\xbf" + arch, capture_output=True)
    assert marked.returncode == 0, marked.stderr.decode()
    assert marked.stdout == plain and b"nor_conv_1x1" in plain
