"""The `nasir` command line: argument parsing and rendering only; the work is in the library.

Exit codes: 0 success, 2 bad input (rendered as `file:line:col: error: ...`), 1 internal failure.
No Python traceback unless --debug.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.source import SourceFile


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are diagnostics pointing into the command line."""

    def error(self, message: str):  # type: ignore[override]
        argv = sys.argv[1:]
        line = "nasir " + shlex.join(argv)
        src = SourceFile("<command line>", line)
        col = 0
        for tok in argv:
            if tok and (f"'{tok}'" in message or f" {tok}" in message.split(":")[-1] or tok in message.split()):
                col = line.find(tok, 6)
                break
        span = src.span(col, col + (len(tok) if col else 5))
        raise DiagnosticError([Diagnostic(message, span, f"see 'nasir {self.prog.split()[-1]} --help'" if " " in self.prog else "see 'nasir --help'")])


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE", default=[], help="override a network parameter")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nasir", description="A declarative graph-IR compiler for neural architecture search.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("check", help="parse and verify .cell files")
    c.add_argument("files", nargs="+", type=Path)
    _add_set(c)

    f = sub.add_parser("fmt", help="print the canonical .cell text")
    f.add_argument("file", type=Path)
    f.add_argument("-i", "--in-place", action="store_true", help="rewrite the file")
    return p


def cmd_check(args) -> int:
    errors: list[Diagnostic] = []
    from nasir.api import load

    for f in args.files:
        try:
            spec = load(f, overrides=args.overrides)
            for w in spec.warnings:
                print(w.render(), file=sys.stderr)
        except DiagnosticError as e:
            errors.extend(e.diagnostics)
    if errors:
        raise DiagnosticError(errors)
    n = len(args.files)
    print(f"ok: {n} file{'s' * (n != 1)} checked", file=sys.stderr)
    return 0


def cmd_fmt(args) -> int:
    from nasir.api import load
    from nasir.io import atomic_write
    from nasir.printer import print_spec

    text = print_spec(load(args.file))
    if args.in_place:
        atomic_write(args.file, text)
    else:
        sys.stdout.write(text)
    return 0


COMMANDS = {"check": cmd_check, "fmt": cmd_fmt}


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = ["nasir", *argv]
    debug = "--debug" in sys.argv[1:]
    try:
        args = build_parser().parse_args(sys.argv[1:])
        return COMMANDS[args.command](args)
    except DiagnosticError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasir: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # an internal failure: a bug in nasir, not bad input
        if debug:
            raise
        print(f"nasir: internal error: {type(e).__name__}: {e}\n  (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
