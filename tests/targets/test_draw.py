"""Cell drawings: every edge labelled with its op, alphas shading by softmax, bad input as diagnostics."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest
from helpers import EXAMPLES

from nasir.api import load
from nasir.diagnostics import DiagnosticError
from nasir.targets.draw import draw


def svg_texts(path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text())


@pytest.mark.slow
def test_derived_cells_are_drawn_with_one_label_per_edge(tmp_path):
    out = draw(load(EXAMPLES / "darts_v2.cell"), tmp_path / "cells.svg")
    texts = Counter(svg_texts(out))
    # darts_v2.cell: normal has 5 sep_conv_3x3, 2 skip_connect, 1 dil_conv_3x3; reduce 5 max_pool_3x3, 3 skip_connect.
    assert texts["sep_conv_3x3"] == 5 and texts["dil_conv_3x3"] == 1
    assert texts["max_pool_3x3"] == 5 and texts["skip_connect"] == 5
    assert all(texts[n] == 2 for n in ("c_k2", "c_k1", "n0", "n1", "n2", "n3", "output"))
    assert texts["normal"] == 1 and texts["reduce (reduction)"] == 1


def test_png_output_is_a_png(tmp_path):
    out = draw(load(EXAMPLES / "darts_v2.cell"), tmp_path / "cells.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.png"]


def test_alphas_label_the_strongest_op_other_than_none_with_its_softmax_weight(tmp_path):
    spec = load(EXAMPLES / "nb201.cell")  # ops per edge: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
    rows = [[5.0, 0.0, 0.0, 0.0, 0.0]] * 6  # `none` strongest everywhere ...
    rows[0] = [5.0, 0.0, 0.0, 1.0, 0.0]  # ... edge x -> n1: nor_conv_3x3 is the strongest real op
    path = tmp_path / "alphas.json"
    path.write_text(json.dumps({"nbcell": rows}))
    out = draw(spec, tmp_path / "space.svg", alphas=path)
    texts = svg_texts(out)
    weight = math.exp(1.0) / (math.exp(5.0) + 3 + math.exp(1.0))
    assert f"nor_conv_3x3 {weight:.2f}" in texts
    skip = 1 / (math.exp(5.0) + 4)  # ties among the real ops go to the first: skip_connect
    assert texts.count(f"skip_connect {skip:.2f}") == 5


def test_search_space_without_alphas_shows_the_choices(tmp_path):
    out = draw(load(EXAMPLES / "darts.cell"), tmp_path / "space.svg")
    assert svg_texts(out).count("choice(darts)") == 28


def test_alphas_of_the_wrong_shape_are_diagnostics(tmp_path):
    spec = load(EXAMPLES / "nb201.cell")
    path = tmp_path / "alphas.json"
    path.write_text(json.dumps({"nbcell": [[0.0] * 5] * 5, "normal": [[0.0] * 5]}))
    with pytest.raises(DiagnosticError) as e:
        draw(spec, tmp_path / "x.svg", alphas=path)
    messages = [d.message for d in e.value.diagnostics]
    assert any("cell 'nbcell' has 6 mixed edges, the file gives 5 rows" in m for m in messages)
    assert any("no cell 'normal' to shade" in m for m in messages)
    assert not (tmp_path / "x.svg").exists()


def test_invalid_alphas_json_points_at_line_and_column(tmp_path):
    path = tmp_path / "alphas.json"
    path.write_text('{"nbcell":\n  [[1, 2,]]}')
    with pytest.raises(DiagnosticError) as e:
        draw(load(EXAMPLES / "nb201.cell"), tmp_path / "x.svg", alphas=path)
    d = e.value.diagnostics[0]
    assert (d.span.file, d.span.line) == (str(path), 2) and "invalid JSON" in d.message


def test_unknown_image_format_is_refused(tmp_path):
    with pytest.raises(DiagnosticError, match=r"\.png or \.svg"):
        draw(load(EXAMPLES / "darts_v2.cell"), tmp_path / "cells.jpg")
    assert list(tmp_path.iterdir()) == []


def test_drawing_twice_gives_the_same_svg(tmp_path):
    spec = load(EXAMPLES / "darts_v2.cell")
    a, b = draw(spec, tmp_path / "a.svg"), draw(spec, tmp_path / "b.svg")
    assert a.read_bytes() == b.read_bytes()


def test_draw_into_an_unwritable_place_is_a_diagnostic_exit_2(tmp_path, capsys):
    from nasir.cli import main

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    code = main(["draw", str(EXAMPLES / "darts_v2.cell"), "-o", str(blocker / "cells.svg")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: cannot write '{blocker / 'cells.svg'}'" in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"


def test_alphas_from_a_device_or_fifo_are_refused_without_reading(tmp_path):
    import os

    spec = load(EXAMPLES / "darts.cell")
    os.mkfifo(tmp_path / "alphas.json")
    for path in ("/dev/zero", tmp_path / "alphas.json"):
        with pytest.raises(DiagnosticError) as e:
            draw(spec, tmp_path / "x.svg", alphas=path)
        assert e.value.diagnostics[0].message.startswith(f"cannot read alphas '{path}': ")
    assert not (tmp_path / "x.svg").exists()


# ---- recurrent cells (docs/recurrent.md) ------------------------------------------------------------
def test_a_derived_recurrent_cell_is_drawn_x_h_into_s0_nodes_and_the_mean(tmp_path):
    from nasir.rnn.space import PUBLISHED, parse_genotype
    from nasir.targets.draw import H_PREV, H_T, OUTPUT, X_T, _graph

    spec = load(EXAMPLES / "darts_v2_rnn.cell")
    cell = spec.cells[0]
    g = _graph(cell)
    # DARTS_V2, from the authors' genotype: node i reads state p through op
    gene = parse_genotype(PUBLISHED["DARTS_V2"])[1].recurrent
    want = {(X_T, "s0"), (H_PREV, "s0")} | {(f"s{p}", f"s{i}") for i, (_, p) in enumerate(gene, 1)} | {(f"s{i}", OUTPUT) for i in range(1, 9)}
    assert set(g.edges()) == want and g.number_of_edges() == 2 + 8 + 8
    ops_on = {(cell.edges[d["index"]].src, cell.edges[d["index"]].dst): cell.edges[d["index"]].op for _, _, d in g.edges(data=True) if d["index"] is not None}
    assert ops_on == {(f"s{p}", f"s{i}"): op for i, (op, p) in enumerate(gene, 1)}
    texts = Counter(svg_texts(draw(spec, tmp_path / "v2.svg")))
    assert (texts["sigmoid"], texts["relu"], texts["tanh"], texts["identity"]) == (2, 3, 2, 1)
    assert all(texts[n] == 1 for n in (X_T, H_PREV, H_T, "s0", "s1", "s8")) and texts["rnn (recurrent)"] == 1


def test_a_recurrent_search_space_is_drawn_with_its_choices_and_shaded_by_alphas(tmp_path):
    spec = load(EXAMPLES / "ptb.cell")
    assert svg_texts(draw(spec, tmp_path / "space.svg")).count("choice(rnn_ops)") == 36
    rows = [[3.0, 0.0, 0.0, 0.0, 0.0]] * 36  # none, tanh, relu, sigmoid, identity: `none` strongest ...
    rows[0] = [3.0, 0.0, 1.0, 0.0, 0.0]  # ... edge s0 -> s1: relu the strongest real op
    texts = svg_texts(draw(spec, tmp_path / "shaded.svg", alphas={"rnn": rows}))
    assert f"relu {math.exp(1.0) / (math.exp(3.0) + 3 + math.exp(1.0)):.2f}" in texts
    assert texts.count(f"tanh {1 / (math.exp(3.0) + 4):.2f}") == 35  # ties among real ops: the first, tanh


# ---- alphas as a table scaled to their spread (issue 16) ------------------------------------------------
def _images(fig):
    return [im for ax in fig.axes for im in ax.images]


def _hand_softmax(row):
    e = [math.exp(x) for x in row]
    return [v / sum(e) for v in e]


def test_alphas_table_colours_uniform_with_the_centre_colour_and_either_side_apart(tmp_path):
    from matplotlib import colormaps

    from nasir.targets.draw import DIVERGING, alphas_figure, alphas_table

    spec = load(EXAMPLES / "nb201.cell")  # 6 mixed edges, K = 5 ops each
    rows = [[0.0] * 5 for _ in range(6)]  # rows 1..5 stay uniform: every share is exactly 1/5
    rows[0] = [0.0, 0.5, 0.0, 0.0, -0.5]  # edge 0: skip_connect above 1/5, avg_pool_3x3 below, the rest between
    assert alphas_figure(spec, {"nbcell": rows}, tmp_path / "alphas.png") == tmp_path / "alphas.png"
    assert (tmp_path / "alphas.png").read_bytes()[:4] == b"\x89PNG"
    fig = alphas_table(spec, {"nbcell": rows})
    (im,) = _images(fig)
    rgba = im.to_rgba(im.get_array())
    centre = colormaps[DIVERGING](0.5)
    for r in range(1, 6):
        for i in range(5):
            assert tuple(rgba[r, i]) == pytest.approx(centre, abs=0)  # exactly the centre colour
    p = _hand_softmax(rows[0])
    assert p[1] > 0.2 > p[4]
    up, down = rgba[0, 1], rgba[0, 4]
    # The centre is grey (red = blue); above uniform red outweighs blue (RdBu_r), below blue outweighs red.
    assert centre[0] == pytest.approx(centre[2], abs=0.01)
    assert up[0] - up[2] > 0.2 and down[2] - down[0] > 0.2
    # The scale is the spread, not [0, 1]: the largest distance from 1/K takes an end of the map.
    dist = max(abs(x - 0.2) for x in p)
    assert im.norm.vmin == pytest.approx(-dist) and im.norm.vmax == pytest.approx(dist)


def test_alphas_table_annotates_every_cell_with_its_softmax_value(tmp_path):
    from nasir.targets.draw import alphas_table

    spec = load(EXAMPLES / "nb201.cell")
    rows = [[0.1 * (r + 1) * (i - 2) for i in range(5)] for r in range(6)]
    fig = alphas_table(spec, {"nbcell": rows})
    (ax,) = [a for a in fig.axes if a.images]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(texts) == 30
    for r, row in enumerate(rows):
        for i, v in enumerate(_hand_softmax(row)):
            assert texts[(r, i)] == f"{v:.3f}"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def test_alphas_table_centres_each_row_on_its_own_k(tmp_path):
    from matplotlib import colormaps

    from nasir.targets.draw import DIVERGING, alphas_table

    spec = spec_of_text("""
        cell c {
          inputs a
          nodes n0, n1
          edges a -> n0 : choice({skip_connect, sep_conv_3x3})
          edges a -> n1 : choice({skip_connect, sep_conv_3x3, max_pool_3x3, avg_pool_3x3})
          edges n0 -> n1 : choice({skip_connect, sep_conv_3x3, max_pool_3x3})
          output concat(n0, n1)
        }
    """)
    rows = [[0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]  # 1/2, 1/4 (uniform rows) and a tilted row of 3
    fig = alphas_table(spec, {"c": rows})
    (im,) = _images(fig)
    rgba = im.to_rgba(im.get_array())
    centre = colormaps[DIVERGING](0.5)
    assert all(tuple(rgba[0, i]) == centre for i in range(2)) and all(tuple(rgba[1, i]) == centre for i in range(4))
    assert rgba[2, 0][0] > rgba[2, 0][2] and rgba[2, 1][2] > rgba[2, 1][0]
    (ax,) = [a for a in fig.axes if a.images]
    # different op lists per row: each cell names its op above its value
    p = _hand_softmax(rows[2])
    assert {t.get_text() for t in ax.texts} >= {"skip_connect\n0.500", "avg_pool_3x3\n0.250", f"skip_connect\n{p[0]:.3f}"}


def test_strengths_beside_the_alphas_and_the_derived_picks_framed(tmp_path):
    from matplotlib.patches import Rectangle

    from nasir.targets.draw import alphas_table

    spec = load(EXAMPLES / "nb201.cell")
    rows = [[0.0, 0.3, 0.1, 0.2, -0.1]] * 6
    strengths = [[1e-3 * (r + 1), 2e-3, 3e-4, 5e-3, 1e-4] for r in range(6)]
    derived = load(EXAMPLES / "nb201.cell").cell("nbcell")
    # a derived spec: every edge fixed to one op; pick nor_conv_3x3 on edge 0 and skip_connect elsewhere
    import attrs

    edges = tuple(attrs.evolve(e, choice=None, op="nor_conv_3x3" if k == 0 else "skip_connect") for k, e in enumerate(derived.edges))
    derived_spec = attrs.evolve(spec, cells=(attrs.evolve(derived, edges=edges),))
    fig = alphas_table(spec, {"nbcell": rows}, strengths={"nbcell": strengths}, derived=derived_spec)
    alpha_ax, strength_ax = [a for a in fig.axes if a.images]
    assert "softmax(alpha)" in alpha_ax.get_title() and "operation strength" in strength_ax.get_title()
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in strength_ax.texts}
    assert all(texts[(r, i)] == f"{v:.2g}" for r, row in enumerate(strengths) for i, v in enumerate(row))
    for ax in (alpha_ax, strength_ax):
        framed = sorted((round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in ax.patches if isinstance(p, Rectangle))
        assert framed == [(0, 3)] + [(r, 1) for r in range(1, 6)]
    # the mean spread in the title: max - min of each row's softmax
    p = _hand_softmax(rows[0])
    assert f"per edge {max(p) - min(p):.2g})" in alpha_ax.get_title()
    # without strengths: one panel per cell kind
    assert len([a for a in alphas_table(spec, {"nbcell": rows}).axes if a.images]) == 1


def spec_of_text(text):
    import textwrap

    return load(textwrap.dedent(text).lstrip("\n"), name="t.cell")


# ---- edge labels do not overlap (issue 16) ------------------------------------------------------------
def _label_boxes(fig):
    """Display boxes of every edge label as rendered: the text and its white pad (the bbox patch)."""
    from nasir.targets.draw import LABEL_GID

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in ax.texts if t.get_gid() == LABEL_GID]
    return texts, [t.get_bbox_patch().get_window_extent(renderer) for t in texts], [t.get_window_extent(renderer) for t in texts]


def _intersecting(boxes):
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].x0 < boxes[j].x1 and boxes[j].x0 < boxes[i].x1 and boxes[i].y0 < boxes[j].y1 and boxes[j].y0 < boxes[i].y1]  # fmt: skip


@pytest.mark.parametrize(("example", "alphas", "n_labels"), [
    ("darts_v2.cell", None, 16),  # derived DARTS cells: 8 edges per cell kind
    ("darts.cell", None, 28),  # the DARTS space: 14 crossing choice edges per cell kind
    ("digits.cell", "random", 28),  # draw --alphas on the main job's space
    ("ptb.cell", None, 36),  # a recurrent space: 36 edges, most inside one column
])  # fmt: skip
def test_no_two_edge_labels_overlap(example, alphas, n_labels):
    import random

    from nasir.targets.draw import draw_figure

    spec = load(EXAMPLES / example)
    if alphas == "random":
        rng = random.Random(0)
        alphas = {c.name: [[rng.gauss(0, 1) for _ in e.candidates] for e in c.edges if e.is_choice] for c in spec.cells if c.is_search_space}
    fig = draw_figure(spec, alphas)
    texts, pads, extents = _label_boxes(fig)
    assert len(texts) == n_labels
    assert _intersecting(pads) == [] and _intersecting(extents) == []
    # the boxes are real (nonzero) and every label is horizontal
    assert all(b.width > 5 and b.height > 3 for b in pads) and all(t.get_rotation() == 0 for t in texts)
    # nor does a label cover a node: square markers of node_size 900 pt^2, 30 pt a side, at the node centres
    half = 15 * fig.dpi / 72
    nodes = [(x - half, y - half, x + half, y + half) for ax in fig.axes for c in ax.collections if c.get_gid() == "nodes"
             for x, y in ax.transData.transform(c.get_offsets())]  # fmt: skip
    assert len(nodes) >= 10  # every cell drawn has at least 7 nodes; the DARTS files two cells
    assert not [(p, n) for p in pads for n in nodes if p.x0 < n[2] and n[0] < p.x1 and p.y0 < n[3] and n[1] < p.y1]


def test_networkx_centred_labels_did_overlap_on_these_cells():
    """The check above can fail: labels centred on their edges (networkx's placement, the earlier drawing,
    made horizontal) overlap on these cells, measured the same way."""
    from nasir.targets.draw import draw_figure

    for example in ("darts_v2.cell", "darts.cell"):
        texts, pads, _ = _label_boxes(draw_figure(load(EXAMPLES / example), spread_labels=False))
        assert len(_intersecting(pads)) > 0, example


def test_alphas_of_the_wrong_shape_for_the_table_are_diagnostics():
    from nasir.targets.draw import alphas_table

    spec = load(EXAMPLES / "nb201.cell")
    with pytest.raises(DiagnosticError, match="cell 'nbcell' has 6 mixed edges of 5 ops; the alphas do not match"):
        alphas_table(spec, {"nbcell": [[0.0] * 5] * 5})
    with pytest.raises(DiagnosticError, match="the strengths do not match"):
        alphas_table(spec, {"nbcell": [[0.0] * 5] * 6}, strengths={"nbcell": [[0.0] * 4] * 6})


def test_recurrent_alphas_table_is_centred_on_uniform_too():
    from matplotlib import colormaps

    from nasir.rnn.plots import alpha_figure
    from nasir.rnn.space import SearchSpace
    from nasir.targets.draw import DIVERGING

    space = SearchSpace(nodes=2)  # rows (0, 1), (0, 2), (1, 2); ops none, tanh, relu, sigmoid, identity
    rows = [[0.0] * 5, [0.0, 0.2, 0.0, 0.0, 0.0], [0.0] * 5]
    fig = alpha_figure(space, rows)
    (ax,) = [a for a in fig.axes if a.images]
    rgba = ax.images[0].to_rgba(ax.images[0].get_array())
    centre = colormaps[DIVERGING](0.5)
    assert all(tuple(rgba[r, i]) == centre for r in (0, 2) for i in range(5))
    assert rgba[1, 1][0] - rgba[1, 1][2] > 0.2 and rgba[1, 0][2] > rgba[1, 0][0]
    p = _hand_softmax(rows[1])
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts[(1, 1)] == f"{p[1]:.3f}" and texts[(0, 0)] == "0.200"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["s0 -> s1", "s0 -> s2", "s1 -> s2"]
