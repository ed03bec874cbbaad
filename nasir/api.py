"""The small library surface the CLI is a skin over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError, did_you_mean
from nasir.frontend import gc_paused, read_source, resolve_spec
from nasir.macro import parse_overrides
from nasir.source import SourceFile
from nasir.verify import verify


def load(path_or_text: str | Path, *, overrides: dict[str, Any] | list[str] | None = None, name: str | None = None,
         allow_include_outside: bool | None = None, network: str | None = None) -> ir.Spec:  # fmt: skip
    """Parse and verify a `.cell` file (a path, or text containing a newline or '{').

    `overrides` are network parameters: a dict, or `--set`-style "name=value" strings.
    `network`: the network the spec is used with (`--network NAME`; see `select_network`): it comes
    first in the returned spec and the overrides are checked against it. None: the first one.
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
        return _load(source, overrides, spans, allow_include_outside, network)


def _load(source: SourceFile, overrides, spans, allow_include_outside: bool | None, network: str | None = None) -> ir.Spec:
    bag = DiagnosticBag()
    spec, broken = resolve_spec(source, bag, Path(source.name), allow_include_outside=allow_include_outside)
    bag.items = [d for d in bag.items if d.severity == "error"]  # warnings are re-added below, once
    if network is not None:
        problem = network_problem(spec, network)
        if problem is not None:
            bag.items.append(problem)
            overrides = None  # they belong to a network that is not there: checking them elsewhere misleads
        else:
            spec = select_network(spec, network)
    verify(spec, overrides, spans, bag, skip_cells=broken)
    bag.items.extend(w for w in spec.warnings if w.severity == "warning")
    bag.check()
    import attrs

    return attrs.evolve(spec, warnings=tuple(bag.items))


# ---- choosing one of several networks (docs/cli.md, "Several networks in one file") -------------------
def network_problem(spec: ir.Spec, name: str) -> Diagnostic | None:
    """Why `--network name` cannot be used with `spec` (None: it can): no such network; the hint
    lists the networks the file declares, the closest name first."""
    names = [n.name for n in spec.networks]
    if name in names:
        return None
    if not names:
        return Diagnostic(f"--network {name}: {spec.file} declares no network", None,
                          "add a 'network' block, or leave out --network")  # fmt: skip
    close = did_you_mean(name, names)
    listed = "it declares " + ", ".join(f"'{n}'" for n in names)
    return Diagnostic(f"--network {name}: {spec.file} has no network named '{name}'", None,
                      f"{close} ({listed})" if close else listed)  # fmt: skip


def select_network(spec: ir.Spec, name: str | None) -> ir.Spec:
    """The spec with network `name` first (its other networks follow in file order); None: unchanged.

    Every consumer (elaboration, the verifier's `--set` check, search, training, drawing, genotype
    export, provenance) uses the spec's first network, so putting the chosen one first is the whole
    selection; a derived spec printed from it names that network first too, and so keeps using it.
    Raises `DiagnosticError` for a name the spec does not declare.
    """
    if name is None:
        return spec
    problem = network_problem(spec, name)
    if problem is not None:
        raise DiagnosticError([problem])
    chosen = spec.network(name)
    if chosen is spec.networks[0]:
        return spec
    import attrs

    return attrs.evolve(spec, networks=(chosen, *(n for n in spec.networks if n is not chosen)))
