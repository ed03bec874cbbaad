"""One lexical scanner for the two languages nasir reads: `.cell` text and genotype (Python-subset) text.

Both comment with '#' to the end of the line and quote strings; brackets nest. The grammars
(grammar/cell.lark, grammar/genotype.lark) parse the text; this module answers the questions a parse
cannot, on text that may not parse: where do top-level declarations start (to re-parse them one by one
after an error), how deep is the bracket nesting at an offset, which brackets are still open, where does
a Python logical line or statement end. Every answer skips comments and strings, so a '#', a bracket or
a keyword inside a string is text, not structure.

A `Lexicon` says what differs between the languages; `tokens` cuts text into tokens of the kinds below,
and every other function here is a walk over those tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import NamedTuple

import attrs

# Token kinds. Trivia (SPACE, NEWLINE, COMMENT, CONTINUATION) carries no structure.
NEWLINE = "newline"
SPACE = "space"  # whitespace other than '\n'
COMMENT = "comment"  # '#' to the end of the line, the newline excluded
STRING = "string"  # a quoted string; an unterminated one ends before its line's newline (or at the end)
OPEN = "open"
CLOSE = "close"
CONTINUATION = "continuation"  # backslash-newline (Python)
CODE = "code"  # a run of anything else (names, numbers, operators)

TRIVIA = frozenset({SPACE, NEWLINE, COMMENT, CONTINUATION})


@attrs.frozen
class Lexicon:
    """What a language's text looks like to the scanner."""

    quotes: str  # characters that open (and close) a string
    escapes: bool  # a backslash escapes the next character inside a string (and continues it over a newline)
    triple: bool  # '''...''' and \"\"\"...\"\"\" strings span lines (Python)
    opens: str  # opening brackets, paired by position with `closes`
    closes: str
    continuation: bool  # backslash-newline joins lines (Python)


# .cell text (grammar/cell.lark): STRING is "..." on one line, without escapes. Declarations nest in
# braces only; '(' and '[' never enclose a declaration, so they are plain code here and a stray one in
# broken text cannot hide the declarations after it.
CELL = Lexicon(quotes='"', escapes=False, triple=False, opens="{", closes="}", continuation=False)
# The keywords that start a top-level declaration of .cell text (grammar/cell.lark, `decl`).
CELL_DECLARATIONS = re.compile(r"\b(include|ops|opset|cell|network|search)\b")
# Genotype text (grammar/genotype.lark): Python's strings, brackets and line continuations.
PYTHON = Lexicon(quotes="'\"", escapes=True, triple=True, opens="([{", closes=")]}", continuation=True)


class Token(NamedTuple):
    kind: str
    start: int
    end: int


@cache
def _pattern(lex: Lexicon) -> re.Pattern[str]:
    strings = []
    for q in lex.quotes:
        e = re.escape(q)
        if lex.triple:  # before the one-line form: ''' is not '' followed by '
            strings.append(rf"{e * 3}(?:\\[\s\S]|\\\Z|[^\\])*?(?:{e * 3}|\Z)")
        if lex.escapes:
            strings.append(rf"{e}(?:\\[\s\S]|[^{e}\\\n])*{e}?")
        else:
            strings.append(rf"{e}[^{e}\n]*{e}?")
    special = re.escape("#" + lex.quotes + lex.opens + lex.closes) + (r"\\" if lex.continuation else "")
    parts = [
        r"(?P<newline>\n)",
        r"(?P<space>[^\S\n]+)",
        r"(?P<comment>#[^\n]*)",
        "(?P<string>" + "|".join(strings) + ")",
        f"(?P<open>[{re.escape(lex.opens)}])",
        f"(?P<close>[{re.escape(lex.closes)}])",
    ]
    if lex.continuation:
        parts.append(r"(?P<continuation>\\\r?\n)")
    parts.append(rf"(?P<code>[^\s{special}]+|[\s\S])")  # the last alternative: any one character (a lone '\')
    return re.compile("|".join(parts))


def tokens(text: str, lex: Lexicon, start: int = 0, end: int | None = None) -> Iterator[Token]:
    """The tokens of `text` that start in [start, end); the last may reach past `end` (a string, a comment)."""
    stop = len(text) if end is None else end
    # Every position starts a match (the last alternative takes any one character), so the matches
    # tile the text; the text is not cut at `end`, so a token across it is the token of the whole text.
    for m in _pattern(lex).finditer(text, start):
        if m.start() >= stop:
            return
        yield Token(m.lastgroup, m.start(), m.end())  # type: ignore[arg-type]


def skip_trivia(text: str, lex: Lexicon, i: int = 0) -> int:
    """The offset of the first character at or after `i` that is not whitespace or a comment."""
    for tok in tokens(text, lex, i):
        if tok.kind not in (SPACE, NEWLINE, COMMENT):
            return tok.start
    return len(text)


def open_brackets(text: str, end: int, lex: Lexicon) -> list[tuple[str, int]]:
    """The brackets still open at offset `end`, innermost last, as (bracket, offset).

    A closing bracket closes the innermost open one only if it matches it; a stray one is ignored.
    """
    stack: list[tuple[str, int]] = []
    for tok in tokens(text, lex, 0, end):
        if tok.kind == OPEN:
            stack.append((text[tok.start], tok.start))
        elif tok.kind == CLOSE and stack and lex.opens.index(stack[-1][0]) == lex.closes.index(text[tok.start]):
            stack.pop()
    return stack


def closer(bracket: str, lex: Lexicon) -> str:
    """The closing bracket of an opening one."""
    return lex.closes[lex.opens.index(bracket)]


def depth_at(text: str, offset: int, lex: Lexicon) -> int:
    """How many brackets are open at `offset`."""
    return len(open_brackets(text, offset, lex))


def too_deep(text: str, limit: int, lex: Lexicon) -> int | None:
    """The offset of the first bracket nested more than `limit` deep, or None."""
    stack: list[str] = []
    for tok in tokens(text, lex):
        if tok.kind == OPEN:
            stack.append(text[tok.start])
            if len(stack) > limit:
                return tok.start
        elif tok.kind == CLOSE and stack and lex.opens.index(stack[-1]) == lex.closes.index(text[tok.start]):
            stack.pop()
    return None


def top_level_chunks(text: str, keywords: re.Pattern[str], lex: Lexicon) -> list[tuple[int, int]]:
    """(start, end) of each top-level declaration: from a `keywords` match outside every bracket to the next.

    Text before the first declaration belongs to none; a declaration runs to the start of the next one
    (its trailing comments included).
    """
    starts: list[int] = []
    depth = 0
    for tok in tokens(text, lex):
        if tok.kind == OPEN:
            depth += 1
        elif tok.kind == CLOSE:
            depth = max(0, depth - 1)
        elif tok.kind == CODE and depth == 0:
            starts.extend(m.start() for m in keywords.finditer(text, tok.start, tok.end))
    bounds = starts + [len(text)]
    return [(bounds[k], bounds[k + 1]) for k in range(len(starts))]


def logical_lines(text: str, lex: Lexicon) -> list[tuple[int, int]]:
    """(start, end) of every logical line that has code (Python's rule): an open bracket or a backslash
    continues a line over its newline, and so does a string that spans lines. `end` is the newline's offset."""
    out: list[tuple[int, int]] = []
    start, depth, code = 0, 0, False
    for tok in tokens(text, lex):
        if tok.kind == NEWLINE:
            if depth == 0:
                if code:
                    out.append((start, tok.start))
                start, code = tok.end, False
            continue
        if tok.kind in TRIVIA:
            continue
        code = True
        if tok.kind == OPEN:
            depth += 1
        elif tok.kind == CLOSE:
            depth = max(0, depth - 1)
    if code:
        out.append((start, len(text)))
    return out


def blank_outside(text: str, a: int, b: int) -> str:
    """`text` with everything outside [a, b) replaced by spaces, newlines kept: offsets, lines and columns stay."""

    def blank(s: str) -> str:
        return "".join(c if c == "\n" else " " for c in s)

    return blank(text[:a]) + text[a:b] + blank(text[b:])
