"""`nasir import GENOTYPE --macro-from FILE.cell`: a genotype's cells placed in the user's own network.

The network (every network of FILE) and any fixed cell it stacks beside the genotype's come from FILE;
the cells come from the genotype and replace FILE's cells of the same names (normal and reduce for a
DARTS genotype, nbcell for a NAS-Bench-201 string, rnn for a recurrent genotype). FILE's search-space
cells that the genotype does not replace, its op sets and its search block are left out: the result is
a derived network. Before any text is written the combination is verified as one spec, so a network
that stacks a cell the genotype cannot provide, in a role it cannot play (a reduction cell as a normal
one), or at sizes it cannot take is an error at FILE:line:col. See docs/import_macro.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from nasir import ir, printer
from nasir.api import load
from nasir.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError
from nasir.frontend import read_source, resolve_spec
from nasir.genotype import AnyGenotype, NB201Arch, RecurrentGenotype, genotype_cells, read_genotype, recurrent_cell
from nasir.source import SourceFile, Span
from nasir.verify import verify


def _kind(g: AnyGenotype) -> str:
    if isinstance(g, RecurrentGenotype):
        return "recurrent genotype"
    return "NAS-Bench-201 string" if isinstance(g, NB201Arch) else "DARTS genotype"


def genotype_cells_of(g: AnyGenotype) -> tuple[ir.Cell, ...]:
    """The derived cells a genotype supplies, by the names the canonical macros stack them under."""
    return (recurrent_cell(g),) if isinstance(g, RecurrentGenotype) else genotype_cells(g)


def _offset(span: Span) -> int:
    assert span.source is not None
    return span.source.line_starts()[span.line - 1] + span.col - 1


def _name_span(span: Span | None, name: str, after: str) -> Span | None:
    """The span of `name` in the statement at `span`, after the text `after` (the cell of a stack, not its count)."""
    if span is None or span.source is None:
        return span
    text, a = span.source.text, _offset(span)
    b = text.find("\n", a)
    line = text[a : len(text) if b < 0 else b]
    start = line.find(after)
    m = re.compile(rf"\b{re.escape(name)}\b").search(line, max(0, start + len(after)) if start >= 0 else 0)
    return span.source.span(a + m.start(), a + m.end()) if m else span


def _references(n: ir.Network) -> list[tuple[str, Span | None]]:
    """The cells a network stacks (or runs, a language model), each with the span of its name."""
    out: list[tuple[str, Span | None]] = []
    if n.language_model is not None:
        lm = n.language_model
        out.append((lm.cell, _name_span(lm.span, lm.cell, "language_model")))
    for b in n.body:
        if isinstance(b, ir.Stack):
            out.append((b.cell, _name_span(b.span, b.cell, ":")))
            if b.reduce is not None:
                out.append((b.reduce, _name_span(b.span, b.reduce, ",")))
    return out


def _own(spec: ir.Spec, x) -> bool:
    span = getattr(x, "span", None)
    return span is None or span.file == spec.file


def _offset_of(source: SourceFile, line: int, col: int) -> int:
    return source.line_starts()[line - 1] + col - 1


def _network_text(source: SourceFile, n: ir.Network) -> str:
    """The network declaration as the user wrote it, with the comment lines directly above it and a
    comment that ends its last line. Cut by its span, not by scanning for keywords: a parameter named
    like a declaration keyword cannot split it."""
    assert n.span is not None
    text = source.text
    a = _offset_of(source, n.span.line, n.span.col)
    b = _offset_of(source, n.span.end_line, n.span.end_col)
    lead = text.rfind("\n", 0, a) + 1
    if text[lead:a].strip():  # the declaration does not start its line
        lead = a
    else:
        while lead > 0:
            above = text.rfind("\n", 0, lead - 1) + 1
            if not text[above : lead - 1].strip().startswith("#"):
                break
            lead = above
    eol = text.find("\n", b)
    eol = len(text) if eol < 0 else eol
    if text[b:eol].strip().startswith("#"):
        b = eol
    return text[lead:b]


def import_into_network(genotype_path: str | Path, macro_from: str | Path, *, name: str | None = None,
                        directory: str | Path | None = None) -> str:
    """A complete `.cell` text: the cells of the genotype in `genotype_path` (`-`: stdin; `name` picks
    one of several) in the network(s) of the user's file `macro_from`.

    `directory`: where the text will be written; the `ops "..."` lines of the user's own ops are made
    relative to it (default: the directory of `macro_from`).
    """
    path = Path(macro_from)
    source = read_source(path)
    # Parsed and resolved, not yet verified: a file with only a network (its cells to come from the
    # genotype) is a macro file; the combination is verified below. Resolving first loads the ops the
    # file names, so the genotype may use them.
    bag = DiagnosticBag()
    spec, _ = resolve_spec(source, bag, path)
    bag.items = [d for d in bag.items if d.severity == "error"]
    bag.check()
    g = read_genotype(genotype_path, name)
    if not spec.networks:
        raise DiagnosticError([Diagnostic(f"'{path}' declares no network to place the genotype's cells in",
                                          source.span(0, 0), "--macro-from takes a .cell file with a 'network' block")])  # fmt: skip
    cells = genotype_cells_of(g)
    provided = {c.name for c in cells}
    kind = _kind(g)
    bag = DiagnosticBag()
    kept: dict[str, ir.Cell] = {}  # the user's fixed cells the network stacks beside the genotype's
    for n in spec.networks:
        for name, span in _references(n):
            if name in provided:
                continue
            own = spec.cell(name)
            if own is not None and not own.is_search_space:
                kept[name] = own
                continue
            verb = "runs" if n.language_model is not None else "stacks"
            bag.error(span, f"network '{n.name}' {verb} cell '{name}', which the {kind} does not provide "
                            f"(it provides {', '.join(c.name for c in cells)})",
                      f"the genotype's cells replace the cells of the same names; {verb[:-1]} "
                      f"{' or '.join(repr(c.name) for c in cells)} here")  # fmt: skip
    bag.check()
    # Verify the combination before writing it: the network's own checks (strides, inputs, sizes) now
    # see the genotype's cells, and report at the network's statements in the user's file.
    combined = attrs.evolve(spec, cells=cells + tuple(kept.values()), opsets=(), search=None)
    bag = verify(combined, None, None, DiagnosticBag())
    bag.items = [d for d in bag.items if d.severity == "error"]
    bag.check()

    # The user's own network text stays as written (comments, expressions); a network from an include is
    # printed from the IR, so the file needs no include (op sets only served the search cells). Kept fixed
    # cells are printed too: a `like` in their text could name a cell the genotype replaced. The search
    # block is left out: it configures a search, and a derived network has nothing to search (its limits
    # would even be checked against the fixed edges).
    directory = Path(directory) if directory is not None else path.parent
    blocks = [printer.op_file_lines(spec, directory)] if spec.op_files else []
    blocks += [printer.cell(c) for c in cells + tuple(kept.values())]
    blocks += [printer.network(x) for x in spec.networks if not _own(spec, x)]
    blocks += [_network_text(source, x) for x in spec.networks if _own(spec, x)]
    origin = "" if str(genotype_path) == "-" else f" from {genotype_path}"
    header = f"# Imported{origin} by nasir into the network of {path}:\n# {g}\n"
    out = header + "\n\n".join(blocks) + "\n"
    # A safety net: what is written loads, as a file in `directory` (where its op paths point).
    load(out, name=str(directory / "imported.cell"), allow_include_outside=True)
    return out
