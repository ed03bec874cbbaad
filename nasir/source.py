"""Source text and positions: every IR element points back into a `SourceFile` through a `Span`."""

from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class SourceFile:
    """The text of one input (a file, a genotype string, a command-line value) kept for rendering."""

    name: str
    text: str

    @classmethod
    def read(cls, path: str | Path) -> SourceFile:
        p = Path(path)
        return cls(str(path), p.read_text(encoding="utf-8"))

    def line(self, n: int) -> str:
        lines = self.text.splitlines()
        return lines[n - 1] if 0 < n <= len(lines) else ""

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        offset = max(0, min(offset, len(self.text)))
        line = self.text.count("\n", 0, offset) + 1
        col = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return line, col

    def span(self, start: int, end: int | None = None) -> Span:
        line, col = self.position(start)
        end_line, end_col = self.position(start + 1 if end is None else end)
        return Span(self.name, line, col, end_line, end_col, self)


@attrs.frozen(eq=False, repr=False)
class Span:
    """A half-open source range; columns are 1-based. Spans never take part in IR equality."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    source: SourceFile | None = None

    def __repr__(self) -> str:
        return f"Span({self.file}:{self.line}:{self.col})"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def span_field():
    """An attrs field for a Span: not compared, not hashed, so parse -> print -> parse is the identity."""
    return attrs.field(default=None, eq=False, repr=False, kw_only=True)
