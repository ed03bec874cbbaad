"""The command line: exit codes, diagnostics on stderr, never a traceback, atomic in-place formatting."""

from __future__ import annotations

import subprocess
import sys

from helpers import EXAMPLES

from nasir.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_accepts_every_example(capsys):
    files = sorted(EXAMPLES.glob("*.cell"))
    assert len(files) >= 7
    code, _, err = run(capsys, "check", *map(str, files))
    assert code == 0 and f"{len(files)} files checked" in err


def test_check_reports_errors_of_all_files_with_caret(capsys, tmp_path):
    a = tmp_path / "a.cell"
    a.write_text("cell c {\n  inputs x\n  n0 = sep_conv_3x3(y)\n  output n0\n}\n")
    b = tmp_path / "b.cell"
    b.write_text("opset s = {skip_conect}\n")
    code, _, err = run(capsys, "check", str(a), str(b))
    assert code == 2
    assert f"{a}:3:21: error: unknown node 'y' in cell 'c'" in err
    assert f"{b}:1:12: error: unknown op 'skip_conect'" in err
    assert "   3 |   n0 = sep_conv_3x3(y)\n     |                     ^" in err
    assert "hint: did you mean 'skip_connect'?" in err
    assert "Traceback" not in err


def test_missing_file_is_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "check", str(tmp_path / "nope.cell"))
    assert code == 2 and "cannot read" in err


def test_bad_flag_points_into_the_command_line(capsys):
    code, _, err = run(capsys, "check", "--frobnicate", "x.cell")
    assert code == 2
    assert err.startswith("<command line>:1:13: error: unrecognized arguments: --frobnicate")


def test_bad_set_value_is_a_diagnostic(capsys):
    code, _, err = run(capsys, "check", str(EXAMPLES / "darts_v2.cell"), "--set", "C=abc")
    assert code == 2 and "<command line>:1:9: error: 'abc' is not a number or true/false" in err


def test_fmt_lays_out_and_in_place_rewrites_and_canonical_prints_the_ir(capsys, tmp_path):
    src = tmp_path / "x.cell"
    src.write_text("cell c { inputs a  nodes n0,n1,n2 edges * -> * : choice({skip_connect,sep_conv_3x3}) output concat(n0..n2) }")
    code, out, _ = run(capsys, "fmt", str(src))
    assert code == 0
    assert out == ("cell c {\n  inputs a\n  nodes n0, n1, n2\n  edges * -> * : choice({skip_connect, sep_conv_3x3})\n"
                   "  output concat(n0..n2)\n}\n")  # fmt: skip
    code, canonical, _ = run(capsys, "fmt", "--canonical", str(src))
    assert code == 0
    assert canonical == ("cell c {\n  inputs a\n  nodes n0..n2\n  edges * -> * : choice({skip_connect, sep_conv_3x3})\n"
                         "  output concat(n0..n2)\n}\n")  # fmt: skip
    assert run(capsys, "fmt", "-i", str(src))[0] == 0
    assert src.read_text() == out
    assert [p.name for p in tmp_path.iterdir()] == ["x.cell"]  # no temporary file left behind
    code, _, err = run(capsys, "fmt", "-i", "--canonical", str(src))
    assert code == 2 and "--canonical cannot be written in place" in err and src.read_text() == out


def test_fmt_of_a_broken_file_leaves_it_untouched(capsys, tmp_path):
    src = tmp_path / "x.cell"
    src.write_text("cell c { inputs a\n")
    assert run(capsys, "fmt", "-i", str(src))[0] == 2
    assert src.read_text() == "cell c { inputs a\n"


def test_module_entry_point_runs_without_traceback(tmp_path):
    bad = tmp_path / "bad.cell"
    bad.write_text("network n(C) {\n  stack 1 cells(C): missing\n}\n")
    r = subprocess.run([sys.executable, "-m", "nasir", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and f"{bad}:1:11: error: parameter 'C' has no value" in r.stderr


def test_check_does_not_import_torch():
    code = "import sys; from nasir.cli import main; main(['check', {!r}]); print('torch' in sys.modules)".format(str(EXAMPLES / "darts.cell"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_cli_makes_openmp_threads_sleep_unless_the_user_chose():
    import os
    import subprocess
    import sys

    code = "import os; from nasir.cli import quiet_openmp_waits; quiet_openmp_waits(); print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        e = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == want, out.stderr


def test_flag_errors_found_below_the_parser_point_at_the_flag(capsys, tmp_path):
    spec = str(EXAMPLES / "digits.cell")
    cases = [
        (["search", spec, "--early-stop", "0", "--out", str(tmp_path / "s")], "--early-stop must be a whole number >= 1, got 0", "0"),
        (["search", spec, "--method", "milenas", "--order", "2", "--out", str(tmp_path / "s")], "--order 2 does not apply", "2"),
        (["train", spec, "--epochs", "0", "--batch-size", "-2", "--out", str(tmp_path / "t")], "--epochs must be a whole number >= 1", "0"),
    ]
    for argv, message, value in cases:
        code, _, err = run(capsys, *argv)
        line = "nasir " + " ".join(argv)
        first = err.splitlines()
        assert code == 2 and "Traceback" not in err and message in first[0], err
        col = int(first[0].split(":")[2])
        assert first[0].startswith("<command line>:1:") and line[col - 1 :].startswith(value), err
        # the caret sits under the value (a long command line is shown cut around it)
        assert first[1][first[2].index("^") :].startswith(value + " "), err
    assert "--batch-size must be a whole number >= 1, got -2" in err  # every bad setting in one report
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()
