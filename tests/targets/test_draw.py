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
