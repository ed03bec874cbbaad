"""The small library surface the CLI is a skin over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasir import ir
from nasir.diagnostics import DiagnosticBag
from nasir.frontend import gc_paused, read_source, resolve_spec
from nasir.macro import parse_overrides
from nasir.source import SourceFile
from nasir.verify import verify


def load(path_or_text: str | Path, *, overrides: dict[str, Any] | list[str] | None = None, name: str | None = None,
         allow_include_outside: bool | None = None) -> ir.Spec:  # fmt: skip
    """Parse and verify a `.cell` file (a path, or text containing a newline or '{').

    `overrides` are network parameters: a dict, or `--set`-style "name=value" strings.
    `allow_include_outside`: may `include` read files outside the spec's directory tree? Default
    (None): no, unless the ambient `nasir.limits.ALLOW_INCLUDE_OUTSIDE` says so (the CLI flag).
    Raises `DiagnosticError` carrying every problem found; warnings are on `spec.warnings`.
    """
    text = str(path_or_text)
    if isinstance(path_or_text, Path) or ("\n" not in text and "{" not in text):
        source = read_source(path_or_text)
    else:
        source = SourceFile(name or "<string>", text)
    spans = None
    if isinstance(overrides, list):
        overrides, spans = parse_overrides(overrides)
    with gc_paused():  # see nasir/frontend.py: parsing and verifying stay linear in the size of the spec
        return _load(source, overrides, spans, allow_include_outside)


def _load(source: SourceFile, overrides, spans, allow_include_outside: bool | None) -> ir.Spec:
    bag = DiagnosticBag()
    spec, broken = resolve_spec(source, bag, Path(source.name), allow_include_outside=allow_include_outside)
    bag.items = [d for d in bag.items if d.severity == "error"]  # warnings are re-added below, once
    verify(spec, overrides, spans, bag, skip_cells=broken)
    bag.items.extend(w for w in spec.warnings if w.severity == "warning")
    bag.check()
    import attrs

    return attrs.evolve(spec, warnings=tuple(bag.items))
