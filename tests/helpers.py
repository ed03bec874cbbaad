"""Shared test helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nasir.api import load
from nasir.diagnostics import DiagnosticError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def errors_of(text: str, overrides=None) -> list[tuple[int, int, str]]:
    """(line, col, message) of every error that loading `text` raises."""
    with pytest.raises(DiagnosticError) as info:
        load(textwrap.dedent(text).lstrip("\n"), name="t.cell", overrides=overrides)
    return [(d.span.line, d.span.col, d.message) if d.span else (0, 0, d.message)
            for d in info.value.diagnostics if d.severity == "error"]  # fmt: skip


def spec_of(text: str, **kw):
    return load(textwrap.dedent(text).lstrip("\n"), name="t.cell", **kw)
