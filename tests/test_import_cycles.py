"""No import cycle among nasir's modules, counting imports inside functions too (the developers' guide).

The graph is read from the source with `ast`: an edge A -> B for every `import B` / `from B import x`
anywhere in A (a function-local import hides a cycle from Python, not from this test). `from nasir
import ir` is an edge to the module nasir.ir; a name defined in a package's `__init__` (`from
nasir.passes import pipeline`, `import nasir` for the public API) is an edge to the package, whose
`__init__` is code like any module's (a cycle through nasir.passes' registry went unseen when packages
were left out as targets).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"nasir": "nasir", "passes": "nasir.passes", "targets": "nasir.targets"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = f
    return mods


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_itself_back_even_through_function_local_imports():
    mods = _modules()
    assert "nasir.search.runner" in mods and "nasir.passes.derive" in mods and "nasir.targets.network" in mods
    assert _cycles(_graph(mods)) == []


def test_a_name_from_a_package_init_is_an_edge_to_the_package(tmp_path):
    graph = _graph({"nasir": ROOT / "nasir" / "__init__.py", "nasir.cli": ROOT / "nasir" / "cli.py",
                    "nasir.passes": ROOT / "passes" / "__init__.py", "nasir.pipeline": ROOT / "nasir" / "pipeline.py"})  # fmt: skip
    assert "nasir" in graph["nasir.cli"]  # `import nasir`: the public API in nasir/__init__.py
    assert graph["nasir.passes"] == {"nasir.pipeline"} and "nasir.passes" not in graph["nasir.pipeline"]
