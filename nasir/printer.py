"""IR -> canonical `.cell` text. parse(print(spec)) == spec for every spec (tested with hypothesis)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nasir import ir

_NUM_SUFFIX = re.compile(r"^(.*?)(\d+)$")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def expr(e: ir.Expr, parent: int = 0, right: bool = False) -> str:
    if isinstance(e, ir.Num):
        if e.text is not None:
            return e.text
        return repr(e.value) if isinstance(e.value, float) else str(e.value)
    if isinstance(e, ir.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ir.Var):
        return e.name
    if isinstance(e, ir.Neg):
        return "-" + expr(e.operand, 3)
    prec = _PREC[e.op]
    text = f"{expr(e.left, prec)} {e.op} {expr(e.right, prec, True)}"
    # Operators are left-associative: a right operand of equal precedence needs parentheses.
    return f"({text})" if prec < parent or (right and prec == parent) else text


def args(a: tuple[ir.Arg, ...]) -> str:
    return ", ".join(expr(x.value) if x.name is None else f"{x.name} = {expr(x.value)}" for x in a)


def layer(x: ir.Layer) -> str:
    return x.name if x.args is None else f"{x.name}({args(x.args)})"


def names(items: tuple[str, ...]) -> str:
    """Comma list with consecutive runs (n0, n1, n2, n3) written as ranges (n0..n3)."""
    out: list[str] = []
    i = 0
    while i < len(items):
        m = _NUM_SUFFIX.match(items[i])
        j = i
        if m and not m.group(2).startswith("0") or (m and m.group(2) == "0"):
            prefix, start = m.group(1), int(m.group(2))
            while j + 1 < len(items) and items[j + 1] == f"{prefix}{start + j + 1 - i}":
                j += 1
        if j - i >= 2:
            out.append(f"{items[i]}..{items[j]}")
        else:
            out.extend(items[i : j + 1])
        i = j + 1
    return ", ".join(out)


def _full_pattern(c: ir.Cell) -> bool:
    """Are the edges exactly `* -> * : choice(X)` with one choice?"""
    if not c.edges or not all(e.is_choice for e in c.edges):
        return False
    choice = c.edges[0].choice
    states = c.states
    expected = [(a, b) for k, b in enumerate(c.node_names) for a in states[: len(c.inputs) + k]]
    return all(e.choice == choice for e in c.edges) and [(e.src, e.dst) for e in c.edges] == expected


def _equation_form(c: ir.Cell) -> bool:
    # A parametric op (`mbconv(k = 5)`) has no equation spelling: such cells print their edges.
    if not c.edges or any(e.is_choice or "(" in (e.op or "") for e in c.edges):
        return False
    order = {n: i for i, n in enumerate(c.node_names)}
    dsts = [e.dst for e in c.edges]
    if any(d not in order for d in dsts):
        return False
    return dsts == sorted(dsts, key=order.__getitem__) and set(dsts) == set(c.node_names)


def cell(c: ir.Cell) -> str:
    lines = [f"cell {c.name} {{"] + (["  recurrent"] if c.recurrent else []) + [f"  inputs {', '.join(c.input_names)}"]
    if c.reduction:
        lines.append("  stride 2 from inputs")
    if _equation_form(c):
        into: dict[str, list[str]] = {}  # grouped once: a scan of all edges per node was O(nodes x edges)
        for e in c.edges:
            into.setdefault(e.dst, []).append(f"{e.op}({e.src})")
        for n in c.node_names:
            lines.append(f"  {n} = {' + '.join(into[n])}")
    else:
        if c.nodes:
            lines.append(f"  nodes {names(c.node_names)}")
        if _full_pattern(c):
            lines.append(f"  edges * -> * : choice({c.edges[0].choice.expr})")  # type: ignore[union-attr]
        else:
            for e in c.edges:
                op = f"choice({e.choice.expr})" if e.choice is not None else e.op
                lines.append(f"  edges {e.src} -> {e.dst} : {op}")
    if c.alpha_rows is not None:  # an annotation for --dump-after; comments do not re-parse
        widths = {len(r) for r in c.alpha_rows}
        lines.append(f"  # alpha: {len(c.alpha_rows)} rows x {'/'.join(map(str, sorted(widths)))} ops, shared by every '{c.name}' cell")
        dropped = sorted({op for e in c.edges if e.computed is not None for op in e.candidates if op not in e.computed})
        if dropped:
            lines.append(f"  # not computed (alpha kept in the softmax): {', '.join(dropped)}")
    if c.beta_rows is not None:
        lines.append(f"  # beta: {sum(len(r.codes) for r in c.beta_rows)} topology variables over {len(c.beta_rows)} deciding nodes")
    if c.topology is not None:
        t = c.topology
        lines.append(f"  topology {t.kind} {t.k}" if t.kind != "any" else "  topology outputs any")
    if c.output is not None:
        o = c.output
        if o.kind in ("concat", "mean"):
            lines.append(f"  output {o.kind}({names(o.nodes)})")
        else:
            lines.append(f"  output {o.nodes[0]}")
    if c.keep is not None:
        lines.append(f"  keep {c.keep} inputs per node")
    lines.append("}")
    return "\n".join(lines)


def frac(f: ir.Frac) -> str:
    return f"{f.num}/{f.den}"


def network(n: ir.Network) -> str:
    params = ", ".join(p.name if p.default is None else f"{p.name} = {expr(p.default)}" for p in n.params)
    lines = [f"network {n.name}({params}) {{"]
    if n.input is not None:
        lines.append(f"  input ({', '.join(expr(x) for x in n.input)})")
    for stem in n.stems:
        lines.append("  stem " + ", ".join(layer(x) for x in stem))
    for b in n.body:
        if isinstance(b, ir.Stack):
            red = f", {b.reduce} at {', '.join(frac(f) for f in b.at)}" if b.reduce else ""
            lines.append(f"  stack {expr(b.count)} cells({expr(b.channels)}): {b.cell}{red}")
        else:
            lines.append(f"  residual({expr(b.channels)})")
    if n.auxiliary is not None:
        a = n.auxiliary
        lines.append(f"  auxiliary {a.style} at {frac(a.at)}" + (f" if {expr(a.when)}" if a.when is not None else ""))
    if n.head:
        lines.append("  head " + ", ".join(layer(x) for x in n.head))
    if n.language_model is not None:
        lines.append(f"  language_model {n.language_model.cell}({args(n.language_model.args)})")
    lines.append("}")
    return "\n".join(lines)


def search(s: ir.SearchConfig) -> str:
    lines = ["search {"]
    for st in s.settings:
        v = st.value
        value = f"{v.name}({args(v.args)})" if isinstance(v, ir.Call) else expr(v)
        lines.append(f"  {st.name} {value}")
    for lim in s.limits:
        lines.append(f"  limit {lim.op} <= {lim.max} per cell")
    for b in s.budgets:
        lines.append(f"  budget {b.kind} <= {expr(b.value)}")
    lines.append("}")
    return "\n".join(lines)


def _own(spec: ir.Spec, x) -> bool:
    span = getattr(x, "span", None)
    return span is None or span.file == spec.file


def op_file_lines(spec: ir.Spec, directory: str | Path | None = None) -> str:
    """`ops "..."` lines (docs/ops.md, "Your own ops"). Without `directory`: the spec's own op files as
    written. With it: every op file the spec loaded (its includes' too), each path relative to
    `directory`, so that a standalone file written there (a derived cell) loads the same ops."""
    if directory is None:
        files = [f.path for f in spec.op_files if _own(spec, f)]
    else:
        files = []
        for f in spec.op_files:
            target = f.resolved or str(Path(f.span.file).parent / f.path if f.span else f.path)
            rel = os.path.relpath(os.path.abspath(target), os.path.abspath(directory))
            files.append(Path(rel).as_posix())
    return "\n".join(f'ops "{p}"' for p in dict.fromkeys(files))


def print_spec(spec: ir.Spec, directory: str | Path | None = None) -> str:
    """Canonical text: includes, op files, op sets, cells, networks, search; elements from includes stay
    there. `directory`: where the text will be written (op file paths are made relative to it)."""
    blocks: list[str] = []
    if spec.op_files:
        lines = op_file_lines(spec, directory)
        if lines:
            blocks.append(lines)
    if spec.includes:
        blocks.append("\n".join(f'include "{i.path}"' for i in spec.includes))
    own_sets = [o for o in spec.opsets if _own(spec, o)]
    if own_sets:
        blocks.append("\n".join(f"opset {o.name} = {_wrap_set(o.expr)}" for o in own_sets))
    blocks += [cell(c) for c in spec.cells if _own(spec, c)]
    blocks += [network(n) for n in spec.networks if _own(spec, n)]
    if spec.search is not None and _own(spec, spec.search):
        blocks.append(search(spec.search))
    return "\n\n".join(blocks) + "\n"


def _wrap_set(text: str, width: int = 96) -> str:
    if len(text) <= width or not text.startswith("{"):
        return text
    items, depth, cur = [], 0, ""
    for ch in text[1:-1]:  # split at the top-level commas: a parametric op has commas inside (k = 5, e = 6)
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    items.append(cur.strip())
    return "{\n" + "".join(f"  {x},\n" for x in items) + "}"
