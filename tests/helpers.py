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


# The DARTS CNN space (cells only) and a tiny network over it (8 x 8 grey input), shared by the tests.
DARTS_CELLS = """
opset darts = {none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5}
cell normal {
  inputs c_k2, c_k1
  nodes n0..n3
  edges * -> n* : choice(darts)
  output concat(n0..n3)
  keep 2 inputs per node
}
cell reduce like normal { stride 2 from inputs }
"""
TINY_SPACE = DARTS_CELLS + """network tiny(C = 4, layers = 3, classes = 10) {
  input (1, 8, 8)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  head global_avg_pool, linear(classes)
}
"""
