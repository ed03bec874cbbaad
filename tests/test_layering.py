"""Import layering (the developers' guide: front end < IR < passes < runtime/targets < CLI), and the
design notes the code cites are in the repository.

Layers, lowest first; a module may import its own layer and the layers below, never one above. The
graph counts every import, function-local ones too (tests/test_import_cycles.py builds it). A module
takes the layer of the longest prefix in LAYERS that names it.
"""

from __future__ import annotations

import re

from test_import_cycles import ROOT, _graph, _modules

LAYERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("front end", "text <-> IR with spans and diagnostics, and the tables the parser checks names against; no torch",
     ("nasir.source", "nasir.diagnostics", "nasir.limits", "nasir.io", "nasir.ir", "nasir.frontend", "nasir.grammar",
      "nasir.genotype", "nasir.fmt", "nasir.printer", "nasir.macros", "nasir.ops", "nasir.rnn.space", "nasir.rnn.text",
      "nasir.syntax", "nasir.scan")),
    ("ir", "meaning of the IR: network elaboration, the verifier, analysis, `load` (parse + verify), provenance records",
     ("nasir.macro", "nasir.verify", "nasir.analysis", "nasir.api", "nasir.provenance", "nasir.rnn.check", "nasir.rnn.info",
      "nasir.layers", "nasir.user_macro", "nasir.methods")),
    ("passes", "IR -> IR transformations, the pass manager and the pipelines (nasir.rnn.lower lowers with them)",
     ("nasir.pipeline", "nasir.passes", "nasir.rnn.lower")),
    ("runtime", "torch: modules, targets, search, training, language models, lowering to files",
     ("nasir.targets", "nasir.search", "nasir.rnn", "nasir.train", "nasir.lower", "nasir.device",
      "nasir.finite", "nasir.runtime", "nasir.data", "nasir.autodl", "nasir.coco_eval", "nasir.measure")),
    ("api", "the public functions in nasir/__init__.py, dispatching to the runtime",
     ("nasir",)),
    ("cli", "argument parsing and printing over the library",
     ("nasir.cli", "nasir.__main__", "nasir.search.cli", "nasir.rnn.hooks", "nasir.rnn.__main__")),
]  # fmt: skip


def layer_of(module: str) -> int:
    best, where = -1, -1
    for i, (_, _, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, where = len(p), i
    assert where >= 0, f"{module} is in no layer: add it to LAYERS"
    return where


def violations() -> set[tuple[str, str]]:
    graph = _graph(_modules())
    return {(a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a)}


def test_every_module_has_a_layer_and_the_table_reads_as_documented():
    for m in _modules():
        layer_of(m)
    assert [name for name, _, _ in LAYERS] == ["front end", "ir", "passes", "runtime", "api", "cli"]
    assert layer_of("nasir.search.cli") == 5 and layer_of("nasir.search.runner") == 3 and layer_of("nasir") == 4


def test_no_module_imports_a_higher_layer():
    found = sorted(violations())

    def show(pairs):
        return "\n".join(f"  {a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})" for a, b in pairs)

    assert not found, f"imports against the layering:\n{show(found)}"


def test_the_layering_check_sees_function_local_imports():
    # nasir/__init__.py imports nasir.api and nasir.lower inside its functions only; the graph must hold them.
    graph = _graph(_modules())
    assert {"nasir.api", "nasir.lower"} <= graph["nasir"]
    text = (ROOT / "nasir" / "__init__.py").read_text()
    assert not re.search(r"^from nasir\.(api|lower)|^import nasir\.(api|lower)", text, re.M)


def test_the_op_registry_names_builders_and_the_targets_layer_registers_them():
    # nasir.ops (front end) imports no module builder; targets/blocks.py registers one for every built-in op.
    from nasir import ops
    from nasir.targets import blocks

    assert not any(b.startswith("nasir.targets") for b in _graph(_modules())["nasir.ops"])
    assert {d.builder for d in ops.BUILTINS.values()} == set(blocks.BUILDERS) and ops.BUILDERS == blocks.BUILDERS


# ---- cited design notes ------------------------------------------------------------------------------
NOTES = ("methods", "performance", "ops", "recurrent", "gpu", "cli", "dsl-sketch", "passes")
SOURCES = ("nasir", "passes", "targets", "grammar", "benchmarks", "tests", "docs")
CITED = re.compile(r"docs/[\w./-]+?\.md")
BARE = re.compile(r"(?<![\w/.-])(?:shared/design/)?(?:" + "|".join(map(re.escape, NOTES)) + r")\.md")


def _files():
    for top in SOURCES:
        for f in sorted((ROOT / top).rglob("*")):
            if f.suffix in (".py", ".md", ".lark") and f.is_file():
                yield f
    yield ROOT / "README.md"
    yield ROOT / "pyproject.toml"


def test_every_cited_docs_note_exists():
    missing = {}
    for f in _files():
        for path in CITED.findall(f.read_text()):
            if not (ROOT / path).is_file():
                missing.setdefault(path, []).append(str(f.relative_to(ROOT)))
    assert not missing, "cited notes missing from docs/: " + "; ".join(f"{p} (cited in {', '.join(fs)})" for p, fs in missing.items())


def test_no_code_cites_a_note_outside_the_repository():
    found = set()
    for f in _files():
        if f.suffix == ".md" or f.name == "test_layering.py":
            continue
        rel = str(f.relative_to(ROOT))
        for m in BARE.finditer(f.read_text()):
            found.add((rel, m.group(0)))
    assert not found, f"cite docs/<note>.md instead: {sorted(found)}"


def test_the_citation_patterns_match_what_they_should():
    assert CITED.findall("see docs/methods.md, and docs/gpu.md.") == ["docs/methods.md", "docs/gpu.md"]
    hits = [m.group(0) for m in BARE.finditer('(ops.md, "x"); shared/design/ops.md; docs/ops.md; README.md')]
    assert hits == ["ops.md", "shared/design/ops.md"]
