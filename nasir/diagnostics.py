"""Diagnostics as a compiler prints them: `file:line:col: error: message`, the line, a caret.

Problems are collected (`DiagnosticBag`) so that every error of a file is reported in one run;
rendering happens only at the edge (the CLI), never inside passes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import attrs

from nasir.source import Span


@attrs.frozen
class Diagnostic:
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: str = "error"

    def render(self) -> str:
        where = str(self.span) if self.span is not None else "nasir"
        out = [f"{where}: {self.severity}: {self.message}"]
        if self.span is not None and self.span.source is not None and self.span.source.quote:
            text = self.span.source.line(self.span.line)
            col = self.span.col
            width = self.span.end_col - col if self.span.end_line == self.span.line else 1
            text, col = _window(text, col)
            gutter = f"{self.span.line:>4} | "
            out.append(gutter + text)
            width = max(1, min(width, len(text) - col + 1))
            pad = "".join(c if c == "\t" else " " for c in text[: col - 1])
            out.append(" " * (len(gutter) - 2) + "| " + pad + "^" + "~" * (width - 1))
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


# The source line a caret is drawn under is cut to this many characters around the caret: a
# multi-megabyte line (a minified or hostile file) prints as one screen line (issue 14.13).
LINE_WINDOW = 120


def _window(text: str, col: int) -> tuple[str, int]:
    """`text` cut to LINE_WINDOW characters around column `col` (1-based), with '...' where cut; the new column."""
    if len(text) <= LINE_WINDOW:
        return text, col
    half = LINE_WINDOW // 2
    a = max(0, min(col - 1 - half, len(text) - LINE_WINDOW))
    b = a + LINE_WINDOW
    head = "..." if a > 0 else ""
    tail = "..." if b < len(text) else ""
    return head + text[a:b] + tail, col - a + len(head)


class DiagnosticError(Exception):
    """Raised when input is bad; carries every diagnostic found, already sorted by position."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        # One report per problem: an element reached twice (a cell and the cell `like` it share the edge
        # text) reported the same message at the same place twice.
        unique: dict[tuple, Diagnostic] = {}
        for d in diagnostics:
            unique.setdefault(_identity(d), d)
        self.diagnostics = sorted(unique.values(), key=_position_key)
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


def _identity(d: Diagnostic) -> tuple:
    s = d.span
    where = None if s is None else (s.file, s.line, s.col, s.end_line, s.end_col)
    return (d.severity, d.message, d.hint, where)


def _position_key(d: Diagnostic):
    s = d.span
    return ("", 0, 0) if s is None else (s.file, s.line, s.col)


class DiagnosticBag:
    """Collects problems; `check()` raises them all at once."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        self._seen = 0  # items counted into _count so far
        self._count = 0

    def error(self, span: Span | None, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(message, span, hint))

    def warning(self, span: Span | None, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(message, span, hint, severity="warning"))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def error_count(self) -> int:
        """len(errors) without building the list: callers take it before and after each element, and a
        list per call made a file with N errors cost O(N^2) (issue 14.13). `items` is a public list
        that callers extend or replace; only what was appended since the last call is counted."""
        n = len(self.items)
        if n < self._seen:  # replaced by a shorter list: count again
            self._seen = self._count = 0
        if n > self._seen:
            self._count += sum(d.severity == "error" for d in self.items[self._seen :])
            self._seen = n
        return self._count

    def check(self) -> None:
        if self.errors:
            raise DiagnosticError(self.items)

    def __bool__(self) -> bool:
        return bool(self.errors)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def error_at(span: Span | None, message: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([Diagnostic(message, span, hint)])
