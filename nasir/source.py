"""Source text and positions: every IR element points back into a `SourceFile` through a `Span`."""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import attrs


@attrs.frozen
class SourceFile:
    """The text of one input (a file, a genotype string, a command-line value) kept for rendering."""

    name: str
    text: str
    # May diagnostics print lines of this text? False for a file that is not nasir's own input (an
    # `include` of a file that is not a .cell file): errors then name the place, never the content.
    quote: bool = attrs.field(default=True, eq=False, kw_only=True)
    # Offsets at which lines start, computed once on first use: a position is then a binary search,
    # so N spans cost O(N log L), not a line count from the start of the text per span (issue 14.13).
    _starts: list[int] | None = attrs.field(default=None, init=False, eq=False, repr=False)

    def line_starts(self) -> list[int]:
        if self._starts is None:
            starts, at = [0], self.text.find("\n")
            while at >= 0:
                starts.append(at + 1)
                at = self.text.find("\n", at + 1)
            object.__setattr__(self, "_starts", starts)
        return self._starts  # type: ignore[return-value]

    @classmethod
    def read(cls, path: str | Path, *, quote: bool = True) -> SourceFile:
        p = Path(path)
        return cls(str(path), p.read_text(encoding="utf-8"), quote=quote)

    def line(self, n: int) -> str:
        """Line `n` (1-based) without its end of line; lines end at '\\n' only, as in `position`."""
        starts = self.line_starts()
        if not 0 < n <= len(starts):
            return ""
        end = starts[n] - 1 if n < len(starts) else len(self.text)
        return self.text[starts[n - 1] : end].rstrip("\r")

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        offset = max(0, min(offset, len(self.text)))
        starts = self.line_starts()
        k = bisect_right(starts, offset) - 1
        return k + 1, offset - starts[k] + 1

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
