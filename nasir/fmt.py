"""`nasir fmt`: lossless layout of `.cell` text (issue 14.8).

The formatter keeps everything the user wrote: every token as written (so `like`, edge patterns such
as `* -> n*`, node lists, includes and numbers stay as they are) and every comment, in its place (a
comment at the end of a line stays there; one on its own line stays on its own line, before the same
token). Only the layout changes:

- one statement per line; statements of a block indented by two spaces, `}` on its own line;
- spacing inside a line by fixed rules (`a, b`, `x -> y : op`, `f(x)`, `1/3`, `C * 2`, `-1`);
- a line break the user put inside a statement stays, the continuation indented by two more spaces
  (a line that starts with `)` or `}` goes back to the statement's indentation);
- blank lines between statements and comments are kept (several become one); blocks (`cell`,
  `network`, `search`) are separated from their neighbours by one blank line.

The result is checked before it is returned: it must lex to the same tokens and comments as the input,
so formatting can never lose text. `fmt(fmt(x)) == fmt(x)` (tested with hypothesis).
The canonical printing of the elaborated IR (nasir/printer.py) stays available as `nasir fmt --canonical`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import attrs
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from nasir.diagnostics import Diagnostic, DiagnosticError
from nasir.frontend import _check_nesting, gc_paused, parse_tree
from nasir.source import SourceFile

_BLOCKS = {"cell", "network", "search"}
_NO_SPACE_BEFORE = {",", ")", ".."}
_NO_SPACE_AFTER = {"(", ".."}
_CLOSERS = {")", "}"}


@cache
def _parser() -> Lark:
    text = resources.files("nasir.grammar").joinpath("cell.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False, keep_all_tokens=True, cache=True)


@attrs.frozen
class _Tok:
    text: str
    parent: str  # the grammar rule the token belongs to (after inlining): decides the spacing
    start: int
    line: int
    end_line: int
    unit: int  # index of the statement-or-line unit it belongs to
    level: int  # indentation level of its unit
    unit_start: bool
    footer: bool  # the `}` that closes a block
    decl: str  # kind of the top-level declaration it is part of


@attrs.frozen
class _Comment:
    text: str
    start: int
    line: int


def comments(text: str) -> list[_Comment]:
    """Every `#` comment outside strings (strings are one line, in double quotes: grammar/cell.lark)."""
    out, i, line = [], 0, 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == '"':
            j = text.find('"', i + 1)
            nl = text.find("\n", i + 1)
            if j < 0 or (0 <= nl < j):  # an unterminated string: the parser has already refused it
                i = n if nl < 0 else nl
                continue
            i = j
        elif c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(_Comment(text[i:j].rstrip(), i, line))
            i = j
            continue
        i += 1
    return out


def _tokens(tree: Tree) -> list[_Tok]:
    toks: list[_Tok] = []
    unit = -1

    def walk(t: Tree, level: int, decl: str, first: list[bool]) -> None:
        for c in t.children:
            if isinstance(c, Tree):
                walk(c, level, decl, first)
            elif isinstance(c, Token):
                toks.append(_Tok(str(c), t.data, c.start_pos, c.line, c.end_line, unit, level, first[0], False, decl))
                first[0] = False

    for decl in tree.children:
        assert isinstance(decl, Tree)
        unit += 1
        if decl.data not in _BLOCKS:
            walk(decl, 0, decl.data, [True])
            continue
        first = [True]
        inside = False
        for c in decl.children:
            if isinstance(c, Token) and str(c) == "{" and not inside:
                toks.append(_Tok("{", decl.data, c.start_pos, c.line, c.end_line, unit, 0, first[0], False, decl.data))
                inside = True
                continue
            if isinstance(c, Token) and str(c) == "}" and inside:
                unit += 1
                toks.append(_Tok("}", decl.data, c.start_pos, c.line, c.end_line, unit, 0, True, True, decl.data))
                continue
            if not inside:
                if isinstance(c, Tree):
                    walk(c, 0, decl.data, first)
                else:
                    toks.append(_Tok(str(c), decl.data, c.start_pos, c.line, c.end_line, unit, 0, first[0], False, decl.data))
                    first[0] = False
                continue
            unit += 1  # a statement of the block
            if isinstance(c, Tree):
                walk(c, 1, decl.data, [True])
            else:  # pragma: no cover - every block statement is a rule of its own
                toks.append(_Tok(str(c), decl.data, c.start_pos, c.line, c.end_line, unit, 1, True, False, decl.data))
    return toks


def _space(p: _Tok, t: _Tok) -> bool:
    """Is there a space between the tokens `p` and `t` on one line?"""
    a, b = p.text, t.text
    if b in _NO_SPACE_BEFORE or a in _NO_SPACE_AFTER:
        return False
    if b == ":":
        return t.parent == "edges"
    if "frac" in (p.parent, t.parent) and "/" in (a, b):
        return False
    if p.parent == "neg" and a == "-":
        return False
    if p.decl == "search" and "sub" in (p.parent, t.parent) and "-" in (a, b) and p.start + len(a) == t.start:
        return False  # a dashed spelling as written (`select strength-star`, README "Search methods"), not `a - b`
    if b == "(":  # f(x), cells(C), concat(...), choice(...); but `input (3, 32, 32)` and `= (a + b)`
        return not (a[:1].isalpha() or a[:1] == "_") or a in ("input", "if")
    if t.parent == "set_lit" and b == "}":
        return False
    if p.parent == "set_lit" and a == "{":
        return False
    return True


def format_text(text: str, name: str = "<string>") -> str:
    """The formatted text (see the module docstring). Raises DiagnosticError if `text` does not parse."""
    with gc_paused():
        return _format(text, name)


def _format(text: str, name: str) -> str:
    source = SourceFile(name, text, quote=name.endswith(".cell") or name.startswith("<"))
    try:
        tree = _parser().parse(text)
    except UnexpectedInput:
        parse_tree(source)  # raises every syntax error as `nasir check` reports them
        raise
    _check_nesting(source, tree)  # before anything recurses over the tree
    toks = _tokens(tree)
    notes = comments(text)
    items: list[_Tok | _Comment] = sorted([*toks, *notes], key=lambda x: x.start)

    lines: list[str] = []
    kinds: list[str] = []  # per output line: code | comment | blank
    cur: list[str] = []  # the line being built
    state: dict = {"prev": None, "prev_tok": None, "break": False}

    def flush() -> None:
        if cur:
            lines.append("".join(cur).rstrip())
            kinds.append("code")
            cur.clear()

    def blank() -> None:
        flush()
        if lines and kinds[-1] != "blank":
            lines.append("")
            kinds.append("blank")

    def next_tok(k: int) -> _Tok | None:
        for x in items[k + 1 :]:
            if isinstance(x, _Tok):
                return x
        return None

    def end_line(x) -> int:
        return x.end_line if isinstance(x, _Tok) else x.line

    prev_decl_kind: str | None = None
    for k, x in enumerate(items):
        prev = state["prev"]
        gap = x.line - end_line(prev) if prev is not None else 0
        if isinstance(x, _Comment):
            if prev is not None and gap == 0 and cur:  # a comment at the end of a line stays there
                cur.append("  " + x.text)
                flush()
                state["break"] = True
                state["prev"] = x
                continue
            nt = next_tok(k)
            top_level_next = nt is not None and nt.unit_start and nt.level == 0 and not nt.footer
            mid_unit = nt is not None and not nt.unit_start
            if nt is None:
                indent = 0
            elif nt.footer:
                indent = 2
            elif nt.unit_start:
                indent = 2 * nt.level
            else:
                indent = 2 * nt.level + (0 if nt.text in _CLOSERS else 2)
            flush()
            if not mid_unit and lines:
                sep = top_level_next and (prev_decl_kind in _BLOCKS or nt.decl in _BLOCKS) and kinds[-1] == "code"
                if gap >= 2 or sep or (nt is None and prev_decl_kind in _BLOCKS and kinds[-1] == "code"):
                    blank()
            lines.append(" " * indent + x.text)
            kinds.append("comment")
            state["break"] = True
            state["prev"] = x
            continue
        # a token
        if x.unit_start:
            flush()
            if x.level == 0 and not x.footer:  # a new top-level declaration
                if lines and ((prev_decl_kind in _BLOCKS or x.decl in _BLOCKS) and kinds[-1] == "code" or gap >= 2):
                    blank()
                prev_decl_kind = x.decl
            elif gap >= 2 and lines and not x.footer:
                blank()
            cur.append(" " * (2 * x.level) + x.text)
        else:
            p = state["prev_tok"]
            if state["break"] or gap > 0:
                flush()
                indent = 2 * x.level + (0 if x.text in _CLOSERS else 2)
                cur.append(" " * indent + x.text)
            else:
                cur.append((" " if _space(p, x) else "") + x.text)
        state["break"] = False
        state["prev"] = x
        state["prev_tok"] = x
    flush()
    while lines and kinds[-1] == "blank":
        lines.pop()
        kinds.pop()
    out = "\n".join(lines) + "\n" if lines else ""
    _check_lossless(([(x.parent, x.text) for x in toks], [c.text for c in notes]), out, name)
    return out


def _signature(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    return [(x.parent, x.text) for x in _tokens(_parser().parse(text))], [c.text for c in comments(text)]


def _check_lossless(before: tuple[list[tuple[str, str]], list[str]], after: str, name: str) -> None:
    """The formatted text must hold the same tokens (in the same rules) and the same comments."""
    try:
        same = before == _signature(after)
    except Exception:  # noqa: BLE001 - the formatted text does not even parse: a bug, reported below
        same = False
    if not same:
        raise DiagnosticError([Diagnostic(f"nasir fmt could not format {name} without changing it; the file is left as it is",
                                          hint="please report this as a bug in nasir fmt")])  # fmt: skip
