"""Cell drawings: each cell kind as a DAG the way the DARTS paper draws it (inputs, nodes, output, op names on edges).

A recurrent cell (docs/recurrent.md) is drawn as the paper's Fig. 5/6: x_t and h_(t-1) into s0, the nodes
with their activations on the edges, and h_t, the mean of the output states.

A search-space cell can be drawn with architecture weights (`alphas`, a mapping {cell name: [[weight per
op] per mixed edge]}, mixed edges in IR edge order, ops in the order of the edge's `choice.ops`):
each mixed edge is then labelled with its strongest op other than `none` (the op DARTS derivation would
keep) and shaded by that op's softmax weight. Layout by networkx (`multipartite_layout` over the
topological generations), rendering by matplotlib's Agg/SVG canvases without pyplot (no screen, no
global state). Output is written atomically; the format follows the suffix (.png or .svg).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from nasir import ir, ops
from nasir.diagnostics import Diagnostic, DiagnosticBag, DiagnosticError, did_you_mean
from nasir.io import atomic_write_with
from nasir.source import SourceFile

FORMATS = {".png": "png", ".svg": "svg"}
OUTPUT = "<output>"

# Node colours of the DARTS paper's cell figures: inputs green, intermediate nodes blue, output yellow;
# a recurrent cell's s0 (computed from x_t and h_(t-1)) a paler green.
_NODE_COLORS = {"input": "#9fdf9f", "state0": "#d4f2d4", "node": "#a6c8ff", "output": "#ffe680"}
# A recurrent cell (docs/recurrent.md): x_t and h_(t-1) feed s0; the output, the next hidden state, is
# the mean of the output states.
X_T, H_PREV, H_T = "x_t", "h_{t-1}", "h_t (mean)"
# Edge colours by kind of op, so that convolutions, pooling and skips read apart at a glance.
_OP_COLORS = {"conv": "#1f4e99", "pool": "#2e8b57", "skip": "#555555", "zero": "#bbbbbb"}

Alphas = Mapping[str, Sequence[Sequence[float]]]


def _op_color(name: str) -> str:
    d = ops.REGISTRY.get(name) or ops.RECURRENT.get(name)
    if d is None or d.is_zero:
        return _OP_COLORS["zero"]
    if d.is_identity:
        return _OP_COLORS["skip"]
    return _OP_COLORS["pool"] if d.is_pool else _OP_COLORS["conv"]


def softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def load_alphas(path: str | Path, cells: Sequence[ir.Cell]) -> dict[str, list[list[float]]]:
    """Read and check an alphas JSON file against the cells it will shade; every problem is a diagnostic."""
    from nasir.frontend import ReadError, read_regular

    p = Path(path)
    try:  # a regular file of bounded size only: /dev/zero or a FIFO is refused, never read (issue 14.11)
        src = read_regular(p)
    except ReadError as e:
        raise DiagnosticError([Diagnostic(f"cannot read alphas '{p}': {e}")]) from None
    text = src.text
    src = SourceFile(str(p), text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DiagnosticError([Diagnostic(f"invalid JSON: {e.msg}", src.span(e.pos))]) from None
    return check_alphas(data, cells, str(p))


def check_alphas(data: Any, cells: Sequence[ir.Cell], where: str = "alphas") -> dict[str, list[list[float]]]:
    bag = DiagnosticBag()
    by_name = {c.name: c for c in cells}
    if not isinstance(data, Mapping):
        raise DiagnosticError([Diagnostic(f"{where}: expected an object {{cell name: [[weight per op] per mixed edge]}}")])
    out: dict[str, list[list[float]]] = {}
    for name, rows in data.items():
        cell = by_name.get(name)
        if cell is None:
            bag.error(None, f"{where}: no cell '{name}' to shade", did_you_mean(name, by_name) or "cells: " + ", ".join(by_name))
            continue
        mixed = [e for e in cell.edges if e.is_choice]
        if not mixed:
            bag.error(cell.span, f"{where}: cell '{name}' has no mixed edges to shade")
            continue
        if not isinstance(rows, list) or len(rows) != len(mixed):
            n = len(rows) if isinstance(rows, list) else "no"
            bag.error(cell.span, f"{where}: cell '{name}' has {len(mixed)} mixed edges, the file gives {n} rows")
            continue
        ok = True
        for k, (row, e) in enumerate(zip(rows, mixed)):
            good = isinstance(row, list) and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in row)
            if not good or len(row) != len(e.candidates):
                bag.error(e.span, f"{where}: row {k} of '{name}' (edge {e.src} -> {e.dst}) needs {len(e.candidates)} finite numbers, "
                                  f"one per op of {e.choice.expr if e.choice else 'the edge'}")  # fmt: skip
                ok = False
        if ok:
            out[name] = [[float(x) for x in row] for row in rows]
    bag.check()
    return out


def _graph(cell: ir.Cell) -> nx.MultiDiGraph:
    """The drawn DAG: cell inputs, nodes, one edge per IR edge (`index` its position in cell.edges) and
    the output. A recurrent cell gets x_t and h_(t-1) feeding its input s0, and an output node h_t, the
    mean of the output states (edges with index None)."""
    g = nx.MultiDiGraph()
    if cell.recurrent:
        g.add_node(X_T, kind="input")
        g.add_node(H_PREV, kind="input")
    for s in cell.input_names:
        g.add_node(s, kind="state0" if cell.recurrent else "input")
        if cell.recurrent:
            g.add_edge(X_T, s, index=None)
            g.add_edge(H_PREV, s, index=None)
    for n in cell.node_names:
        g.add_node(n, kind="node")
    for k, e in enumerate(cell.edges):
        g.add_edge(e.src, e.dst, index=k)
    out = cell.output
    if out is not None and out.kind in ("concat", "mean"):
        g.add_node(OUTPUT, kind="output")
        for n in out.nodes:
            g.add_edge(n, OUTPUT, index=None)
    elif out is not None:
        g.nodes[out.nodes[0]]["kind"] = "output"
    for layer, names in enumerate(nx.topological_generations(g)):
        for n in names:
            g.nodes[n]["layer"] = layer
    # Inputs share the first column even when one of them only feeds later nodes.
    for s in cell.input_names if not cell.recurrent else ():
        g.nodes[s]["layer"] = 0
    return g


def _draw_cell(ax: Any, cell: ir.Cell, rows: list[list[float]] | None, cmap: Any) -> list[EdgeLabel]:
    """Nodes and edges of one cell; the edge labels come back, to be placed once the layout is final
    (`place_labels`)."""
    g = _graph(cell)
    layers: dict[int, list[str]] = {}
    for n, d in g.nodes(data=True):  # insertion order = cell order; reversed so that the first is on top
        layers.setdefault(d["layer"], []).insert(0, n)
    if cell.is_search_space:
        # Every node reads every earlier one, so the generations are a chain of one-node columns and
        # all edges would lie on one line; stack the nodes in one column instead (inputs | nodes | output).
        column = {"input": 0, "state0": 1, "node": 2, "output": 3} if cell.recurrent else {"input": 0, "node": 1, "output": 2}
        layers = {}
        for n, d in g.nodes(data=True):
            layers.setdefault(column[d["kind"]], []).insert(0, n)
    pos = nx.multipartite_layout(g, subset_key=layers, align="vertical")
    labels = {n: ((H_T if cell.recurrent else "output") if n == OUTPUT else n) for n in g.nodes}
    for kind, color in _NODE_COLORS.items():
        nodes = [n for n, d in g.nodes(data=True) if d["kind"] == kind]
        drawn = nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_color=color, node_shape="s", node_size=900, edgecolors="black", ax=ax)
        if drawn is not None:
            drawn.set_gid("nodes")
    nx.draw_networkx_labels(g, pos, labels=labels, font_size=8, ax=ax)
    mixed_row = {k: r for r, k in enumerate(k for k, e in enumerate(cell.edges) if e.is_choice)}
    keys = list(g.edges(keys=True, data=True))
    look: dict[tuple[str, str, int], tuple[Any, float, str | None, str]] = {}
    for u, v, key, d in keys:
        k = d["index"]
        e = cell.edges[k] if k is not None else None
        if e is None:  # into the concatenation (or the mean), or x_t / h_(t-1) into s0
            look[(u, v, key)] = ("black", 1.0, None, "solid")
        elif not e.is_choice:
            look[(u, v, key)] = (_op_color(e.op), 1.6, e.op, "solid")  # type: ignore[arg-type]
        elif rows is None:
            look[(u, v, key)] = ("#777777", 1.0, f"choice({e.choice.expr})", "dashed")  # type: ignore[union-attr]
        else:
            weights = softmax(rows[mixed_row[k]])
            real = [i for i, o in enumerate(e.candidates) if not ops.op_def(o).is_zero] or list(range(len(weights)))
            i = max(real, key=lambda i: weights[i])
            look[(u, v, key)] = (cmap(weights[i]), 0.8 + 3.0 * weights[i], f"{e.candidates[i]} {weights[i]:.2f}", "solid")
    # Edges between columns bend slightly (more for parallel edges); edges inside one column bend far,
    # so that they nest beside the column instead of running through its nodes.
    same_column = {x for x in look if abs(pos[x[0]][0] - pos[x[1]][0]) < 1e-9}
    top = max((k for _, _, k, _ in keys), default=0) + 1
    labels: list[EdgeLabel] = []
    for group, base in ((set(look) - same_column, 0.12), (same_column, -0.6)):
        edgelist = [x for x in look if x in group]
        if not edgelist:
            continue
        styles = [f"arc3,rad={base + math.copysign(0.18, base) * key}" for key in range(top)]
        arrows = nx.draw_networkx_edges(g, pos, edgelist=edgelist, edge_color=[look[x][0] for x in edgelist],
                                        width=[look[x][1] for x in edgelist], style=[look[x][3] for x in edgelist], arrows=True,
                                        arrowsize=12, node_size=900, node_shape="s", connectionstyle=styles, ax=ax)  # fmt: skip
        for x, arrow in zip(edgelist, arrows):
            if look[x][2] is not None:
                labels.append(EdgeLabel(ax, look[x][2], tuple(pos[x[0]]), tuple(pos[x[1]]), arrow.get_connectionstyle()))
    title = f"{cell.name}" + (" (reduction)" if cell.reduction else "") + (" (recurrent)" if cell.recurrent else "")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    return labels


# ---- edge labels that do not overlap (issue 16) ---------------------------------------------------------
# networkx centres every label on its edge, rotated along it, so the labels of edges that cross or run
# side by side cover each other. Labels here are horizontal and placed once the figure's layout is final:
# in display space, each at the first point along its own edge where its box meets no label placed
# before it and no node; failing that, beside such a point, tied to it by a thin leader line.
LABEL_GID = "edge-label"
LABEL_FONT = 7
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}
_ALONG = (0.5, 0.4, 0.6, 0.3, 0.7, 0.35, 0.65, 0.45, 0.55, 0.25, 0.75, 0.2, 0.8, 0.15, 0.85)


class EdgeLabel:
    """An edge label waiting for its place: the text, the edge's end points in data coordinates and the
    connection style its arrow was drawn with (the curve the label follows)."""

    def __init__(self, ax: Any, text: str, a: tuple[float, float], b: tuple[float, float], style: Any):
        self.ax, self.text, self.a, self.b, self.style = ax, text, a, b, style

    def curve(self) -> Any:
        """The edge's path in display coordinates (a quadratic Bezier for arc3: start, control, end)."""
        a, b = self.ax.transData.transform([self.a, self.b])
        return self.style.connect(tuple(a), tuple(b)).vertices

    def at(self, t: float) -> tuple[float, float]:
        v = self.curve()
        if len(v) == 3:
            (x1, y1), (cx, cy), (x2, y2) = v
            u = 1 - t
            return (u * u * x1 + 2 * t * u * cx + t * t * x2, u * u * y1 + 2 * t * u * cy + t * t * y2)
        (x1, y1), (x2, y2) = v[0], v[-1]
        return (x1 + t * (x2 - x1), y1 + t * (y2 - y1))


def _offsets(sx: float, sy: float, nx_: int = 24, ny: int = 24) -> list[tuple[float, float]]:
    """Grid offsets around a point, nearest first (ties: the order of the grid, so the result is stable)."""
    grid = [(i * sx, j * sy) for j in range(-ny, ny + 1) for i in range(-nx_, nx_ + 1) if (i, j) != (0, 0)]
    return sorted(grid, key=lambda d: math.hypot(*d))


def _overlaps(box: tuple[float, float, float, float], others: Sequence[tuple[float, float, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in others)


def place_labels(fig: Any, labels: Sequence[EdgeLabel], node_boxes: Sequence[tuple[float, float, float, float]] = (),
                 spread: bool = True) -> list[Any]:  # fmt: skip
    """Add the labels as matplotlib Text (gid LABEL_GID) so that no two label boxes (text plus its
    white pad) intersect, nor a label and a node box (display coordinates). Short edges are placed first:
    they have the fewest places. `spread=False`: every label at its edge's midpoint. Returns the Texts."""
    from matplotlib.lines import Line2D

    renderer = fig.canvas.get_renderer()
    gap = 2.0  # pixels between two boxes
    placed: list[tuple[float, float, float, float]] = []
    obstacles = list(node_boxes)
    for t in [ax.title for ax in {lab.ax: None for lab in labels}] + list(fig.texts):  # the axes' titles, the suptitle
        if t.get_text():
            e = t.get_window_extent(renderer)
            obstacles.append((e.x0, e.y0, e.x1, e.y1))
    texts = []
    order = sorted(labels, key=lambda lab: math.dist(*lab.curve()[[0, -1]]))
    for lab in order:
        t = lab.ax.text(0, 0, lab.text, fontsize=LABEL_FONT, ha="center", va="center", bbox=_LABEL_BOX, zorder=3,
                        transform=lab.ax.transData, gid=LABEL_GID)  # fmt: skip
        t.draw(renderer)  # sizes the bbox patch
        ext = t.get_bbox_patch().get_window_extent(renderer)
        hw, hh = ext.width / 2 + gap / 2, ext.height / 2 + gap / 2

        def box(p: tuple[float, float]) -> tuple[float, float, float, float]:
            return (p[0] - hw, p[1] - hh, p[0] + hw, p[1] + hh)  # noqa: B023

        spot, anchor = (None, None) if spread else (lab.at(0.5), None)
        for s in _ALONG if spread else ():
            p = lab.at(s)
            if not _overlaps(box(p), placed + obstacles):
                spot, anchor = p, None
                break
        # Beside the edge: the nearest free place on a grid around its points (a quarter label wide, one
        # label high), tied to its point by a leader line.
        points = [lab.at(s) for s in _ALONG[:9]] if spread and spot is None else []
        for dx, dy in _offsets(hw / 2, 2 * hh) if points else ():
            for p in points:
                q = (p[0] + dx, p[1] + dy)
                if not _overlaps(box(q), placed + obstacles):
                    spot, anchor = q, p
                    break
            if spot is not None:
                break
        if spot is None:  # no free place in the whole grid: unreachable for cells of a few dozen edges
            spot, anchor = lab.at(0.5), None
        placed.append(box(spot))
        inv = lab.ax.transData.inverted()
        t.set_position(tuple(inv.transform(spot)))
        if anchor is not None:
            (ax_, ay_), (sx, sy) = inv.transform(anchor), inv.transform(spot)
            lab.ax.add_line(Line2D([ax_, sx], [ay_, sy], lw=0.5, color="#888888", zorder=2))
        texts.append(t)
    return texts


def node_boxes(fig: Any, axes: Sequence[Any], size_pt: float = 30.0) -> list[tuple[float, float, float, float]]:
    """Display boxes of the square node markers (node_size 900 = 30 pt sides) drawn in `axes`."""
    half = size_pt / 2 * fig.dpi / 72
    out = []
    for ax in axes:
        for coll in ax.collections:
            offsets = getattr(coll, "get_offsets", lambda: [])()
            if coll.get_gid() != "nodes":
                continue
            for x, y in ax.transData.transform(offsets):
                out.append((x - half, y - half, x + half, y + half))
    return out


def draw(spec: ir.Spec, out_path: str | Path, alphas: Alphas | str | Path | None = None) -> Path:
    """Draw every cell kind the network stacks (or every cell of a spec without network) into one .png/.svg."""
    from matplotlib import rc_context

    out = Path(out_path)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise DiagnosticError([Diagnostic(f"cannot draw to '{out}': the file name must end in .png or .svg")])
    fig = draw_figure(spec, alphas)

    def save(tmp: str) -> None:
        # SVG text stays text (searchable, selectable); no hash salt or date: the same spec draws the same file.
        with rc_context({"svg.fonttype": "none", "svg.hashsalt": "nasir"}):
            fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=_metadata(fmt))

    try:
        atomic_write_with(out, save)
    except OSError as e:  # an unwritable place, a path under a file, a full disk: bad input, not a bug
        raise DiagnosticError([Diagnostic(f"cannot write '{out}': {e.strerror or e}")]) from None
    return out


def draw_figure(spec: ir.Spec, alphas: Alphas | str | Path | None = None, spread_labels: bool = True) -> Any:
    """The matplotlib Figure `draw` writes (Agg canvas, layout final, edge labels placed).
    `spread_labels=False` leaves every label at its edge's midpoint (networkx's place; for comparison)."""
    net = spec.network()
    cells = [c for c in (spec.cell(n) for n in stacked_cells(net)) if c is not None] if net is not None else []
    cells = cells or list(spec.cells)
    if not cells:
        raise DiagnosticError([Diagnostic(f"{spec.file} has no cells to draw")])
    rows: dict[str, list[list[float]]] = {}
    if isinstance(alphas, str | Path):
        rows = load_alphas(alphas, cells)
    elif alphas is not None:
        rows = check_alphas(alphas, cells)

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2 * len(cells)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(cells), 1, squeeze=False)[:, 0]
    cmap = colormaps["Blues"]
    labels: list[EdgeLabel] = []
    for ax, cell in zip(axes, cells):
        shade = rows.get(cell.name)
        # Keep light shades visible: map weights onto the darker half of the colour map.
        labels += _draw_cell(ax, cell, shade, (lambda w: cmap(0.35 + 0.65 * w)) if shade is not None else cmap)
    fig.suptitle(f"{Path(spec.file).name}" + (" (shaded by softmax(alpha))" if rows else ""), fontsize=11)
    fig.tight_layout()
    # The layout is final from here on (savefig's bbox_inches="tight" only crops): place the labels.
    place_labels(fig, labels, node_boxes(fig, axes), spread=spread_labels)
    return fig


def _metadata(fmt: str) -> dict[str, Any]:
    return {"Date": None} if fmt == "svg" else {}


def stacked_cells(net: ir.Network) -> list[str]:
    """The cell kinds a network stacks, normal before reduction, in order of appearance."""
    names: list[str] = []
    for b in net.body:
        if isinstance(b, ir.Stack):
            names += [b.cell] + ([b.reduce] if b.reduce else [])
    return list(dict.fromkeys(names))


# ---- architecture weights as a table ------------------------------------------------------------------
# A short search moves softmax(alpha) only a little away from uniform (1/K on an edge with K candidates),
# so a colour scale from 0 paints every cell alike. The table colours each cell by its distance from the
# uniform value of its own row, p - 1/K, on a diverging map scaled to the largest distance in the panel:
# the uniform value is the map's centre colour exactly, favoured ops lean red, disfavoured ones blue.
DIVERGING = "RdBu_r"


def _mixed_edges(cell: ir.Cell) -> list[ir.Edge]:
    """The mixed edges in the order of the alpha rows: by `Edge.alpha` where the mixed_ops pass numbered
    them, else in IR order (the order `check_alphas` reads)."""
    mixed = [e for e in cell.edges if e.is_choice]
    if mixed and all(e.alpha is not None for e in mixed):
        mixed.sort(key=lambda e: e.alpha)  # type: ignore[arg-type, return-value]
    return mixed


def uniform_deviation(values: Sequence[float]) -> list[float]:
    """A row's share of its total minus the uniform share 1/K; 0 exactly where the share is 1/K up to
    float rounding (|d| <= 1e-12), so that a uniform row gets the map's centre colour exactly."""
    total = sum(values)
    k = len(values)
    if total <= 0:
        return [0.0] * k
    dev = [v / total - 1.0 / k for v in values]
    return [d if abs(d) > 1e-12 else 0.0 for d in dev]


def _derived_picks(derived: ir.Spec | None, kind: str, edges: Sequence[ir.Edge]) -> set[tuple[int, int]]:
    """(row, op index) of every (edge, op) the derived spec kept in cell `kind`."""
    cell = derived.cell(kind) if derived is not None else None
    if cell is None:
        return set()
    kept = {(e.src, e.dst, e.op) for e in cell.edges if not e.is_choice}
    return {(r, i) for r, e in enumerate(edges) for i, o in enumerate(e.candidates) if (e.src, e.dst, o) in kept}


def table(ax: Any, rows: Sequence[str], ops_per_row: Sequence[Sequence[str]], values: Sequence[Sequence[float]],
          picks: Collection[tuple[int, int]] = (), fmt: str = "{:.3f}", title: str = "", label: str = "") -> Any:  # fmt: skip
    """One heatmap on `ax`: a row per edge (`rows` its labels), a column per op; colour = the value's share
    of its row minus 1/K (uniform_deviation) on the diverging map DIVERGING, scaled to the largest such
    distance in the table; every cell annotated with its value (`fmt`); the (row, op) in `picks` framed
    and their rows' labels bold. Rows of different op lists name the op in each cell. Returns the image."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    width = max(len(r) for r in values)
    dev = np.full((len(values), width), np.nan)
    for r, row in enumerate(values):
        dev[r, : len(row)] = uniform_deviation(row)
    scale = float(np.nanmax(np.abs(dev))) if np.isfinite(dev).any() else 0.0
    scale = scale if scale > 0 else 1e-12  # all uniform: every cell gets the centre colour
    im = ax.imshow(dev, cmap=colormaps[DIVERGING], norm=Normalize(-scale, scale), aspect="auto", interpolation="nearest")
    same_ops = len({tuple(o) for o in ops_per_row}) == 1
    for r, (ops_, row) in enumerate(zip(ops_per_row, values)):
        for i, v in enumerate(row):
            text = fmt.format(v) if same_ops else f"{ops_[i]}\n{fmt.format(v)}"
            strong = abs(dev[r, i]) > 0.6 * scale
            ax.text(i, r, text, ha="center", va="center", fontsize=6, color="white" if strong else "black")
    for r, i in sorted(picks):
        ax.add_patch(Rectangle((i - 0.5, r - 0.5), 1, 1, fill=False, ec="black", lw=2.0))
    kept_rows = {r for r, _ in picks}
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    for r, t in enumerate(ax.get_yticklabels()):
        if r in kept_rows:
            t.set_fontweight("bold")
    if same_ops:
        ax.set_xticks(range(width), list(ops_per_row[0]), rotation=30, ha="right", fontsize=7)
    else:
        ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.04)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return im


def mean_spread(rows: Sequence[Sequence[float]]) -> float:
    """Mean over rows of max - min: how far a short search moved softmax(alpha) apart."""
    return sum(max(r) - min(r) for r in rows) / len(rows) if rows else 0.0


def alphas_figure(spec: ir.Spec, alphas: Alphas, path: str | Path, strengths: Alphas | None = None,
                  derived: ir.Spec | None = None) -> Path:  # fmt: skip
    """Write `alphas_table` to `path` (.png, or .svg by suffix) atomically; returns the path."""
    from matplotlib import rc_context

    out = Path(path)
    fmt = FORMATS.get(out.suffix.lower(), "png")
    fig = alphas_table(spec, alphas, strengths, derived)

    def save(tmp: str) -> None:
        with rc_context({"svg.fonttype": "none", "svg.hashsalt": "nasir"}):
            fig.savefig(tmp, format=fmt, dpi=110, metadata=_metadata(fmt))

    try:
        atomic_write_with(out, save)
    except OSError as e:
        raise DiagnosticError([Diagnostic(f"cannot write '{out}': {e.strerror or e}")]) from None
    return out


def alphas_table(spec: ir.Spec, alphas: Alphas, strengths: Alphas | None = None, derived: ir.Spec | None = None) -> Any:
    """softmax(alpha) per cell kind as a table scaled to its spread (`table`), with the operation
    strengths (OStr-DARTS Eq. 11) beside it when given and the derived architecture's picks framed
    (`derived`, the spec the derivation returned). `alphas` / `strengths`: {cell kind: [[value per op]
    per mixed edge]} in alpha-row order. Returns the matplotlib Figure (Agg canvas).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = [k for k in alphas if spec.cell(k) is not None and _mixed_edges(spec.cell(k))]  # type: ignore[arg-type]
    if not kinds:
        raise DiagnosticError([Diagnostic(f"{spec.file}: no cell of the alphas ({', '.join(alphas) or 'none'}) has mixed edges")])
    strengths = {k: v for k, v in (strengths or {}).items() if k in kinds}
    for name, given in (("alphas", alphas), ("strengths", strengths)):
        for k in kinds if name == "alphas" else strengths:
            edges = _mixed_edges(spec.cell(k))  # type: ignore[arg-type]
            if len(given[k]) != len(edges) or any(len(r) != len(e.candidates) for r, e in zip(given[k], edges)):
                raise DiagnosticError([Diagnostic(f"{name}: cell '{k}' has {len(edges)} mixed edges of "
                                                  f"{'/'.join(sorted({str(len(e.candidates)) for e in edges}))} ops; the {name} do not match")])  # fmt: skip
    cols = 2 if strengths else 1
    heights = [len(alphas[k]) for k in kinds]
    fig = Figure(figsize=(8.5 * cols, 1.6 + 0.34 * sum(heights) + 0.9 * len(kinds)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(kinds), cols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, kind in enumerate(kinds):
        edges = _mixed_edges(spec.cell(kind))  # type: ignore[arg-type]
        names, ops_ = [f"{e.src} -> {e.dst}" for e in edges], [e.candidates for e in edges]
        soft = [softmax(row) for row in alphas[kind]]
        picks = _derived_picks(derived, kind, edges)
        table(axes[r, 0], names, ops_, soft, picks, "{:.3f}",
              f"{kind}: softmax(alpha) (mean max - min per edge {mean_spread(soft):.2g})", "softmax(alpha) - 1/K")  # fmt: skip
        if strengths:
            if kind in strengths:
                table(axes[r, 1], names, ops_, strengths[kind], picks, "{:.2g}",
                      f"{kind}: operation strength (OStr-DARTS Eq. 11)", "strength / edge total - 1/K")  # fmt: skip
            else:
                axes[r, 1].axis("off")
    fig.tight_layout()
    return fig
