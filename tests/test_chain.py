"""Chain-structured spaces (issue 16; examples/proxyless.cell, docs/network.md "Chain spaces").

A stage is a one-input cell whose nodes form a chain of layers, each edge with its own choice. Two
forms: the example's MBConv layers (which add their input themselves; `skip_connect` drops a layer)
and RESIDUAL below, written with DARTS ops and explicit skip edges (`none` drops a layer). The
checks: the supernet's structure against a hand count of candidates and parameters, derivation takes
the argmax of every layer's own row, a dropped layer is the identity, the widening projection of a
reduction stage, the generated torch source, ONNX, and the CLI end to end on tiny settings."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import EXAMPLES

from nasir import cli
from nasir.api import load
from nasir.macro import plan
from nasir.passes.derive import Derive
from nasir.search.supernet import build_supernet, prepare
from nasir.targets import network, torch_source

SPACE = EXAMPLES / "proxyless.cell"
# The residual form: layer k is l_k = l_(k-1) + op(l_(k-1)), an edge into a_k and two skip edges.
RESIDUAL = """\
opset first = {sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, skip_connect}
opset layer = {sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, none}

cell stage {
  inputs x
  nodes  l1, a2, l2, a3, l3
  edges  x -> l1 : choice(first)
  edges  l1 -> a2 : choice(layer)
  edges  l1 -> l2 : skip_connect
  edges  a2 -> l2 : skip_connect
  edges  l2 -> a3 : choice(layer)
  edges  l2 -> l3 : skip_connect
  edges  a3 -> l3 : skip_connect
  output l3
}

cell down1 like stage {
  stride 2 from inputs
}

cell mid like stage {
}

cell down2 like down1 {
}

network proxyless(C = 8, classes = 10) {
  input (1, 8, 8)
  stem  conv3x3(C), bn
  stack 2 cells(C): stage, down1 at 1/2
  stack 2 cells(2 * C): mid, down2 at 1/2
  head  global_avg_pool, linear(classes)
}

search {
  method darts(order = 1)
  select magnitude
  epochs 1
  batch_size 32
}
"""
KINDS = ("stage", "down1", "mid", "down2")
MIXED = [("x", "l1"), ("l1", "a2"), ("l2", "a3")]  # the three searchable layers of every stage


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _mixed_params(c: int, stride: int, first: bool) -> int:
    """Weights of one mixed edge at c channels in the supernet (BN without affine there: no weights).
    SepConv k: two (depthwise c*k*k + pointwise c*c); DilConv 3: c*9 + c*c (docs/ops.md); skip_connect at
    stride 2 is FactorizedReduce, two 1x1 convs c -> c/2; `none` and a stride-1 skip have none."""
    p = 2 * (9 * c + c * c) + 2 * (25 * c + c * c) + (9 * c + c * c)
    return p + (c * c if first and stride == 2 else 0)


def test_supernet_structure_by_hand():
    spec = load(RESIDUAL, name="residual.cell")
    sn = build_supernet(spec, overrides={"C": 4}, seed=0, channels_last=False)
    # one alpha row per layer of every stage, four candidates each: every layer chooses for itself
    assert {k: tuple(v.shape) for k, v in sn.alphas.items()} == {k: (3, 4) for k in KINDS}
    first = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "skip_connect")
    layer = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "none")
    assert sn.rows["stage"] == (first, layer, layer)
    # channels: stage C = 4, down1 8 (stride 2), mid 8, down2 16 (stride 2)
    p = sn.plan
    assert [(b.cell, b.C_p, b.C, b.stride, b.scale) for b in p.body] == [
        ("stage", 4, 4, 1, 1), ("down1", 4, 8, 2, 2), ("mid", 8, 8, 1, 2), ("down2", 8, 16, 2, 4)]
    stem = 1 * 4 * 9 + 2 * 4  # conv3x3(1 -> 4) + the stem's affine BN
    cells = [
        3 * _mixed_params(4, 1, False),
        4 * 8 + _mixed_params(8, 2, True) + 2 * _mixed_params(8, 1, False),  # 1x1 projection 4 -> 8
        3 * _mixed_params(8, 1, False),
        8 * 16 + _mixed_params(16, 2, True) + 2 * _mixed_params(16, 1, False),
    ]
    head = 16 * 10 + 10
    assert [_count(m) for m in sn.net.cells] == cells
    assert _count(sn.net) == stem + sum(cells) + head
    out = sn(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)


def _rows(choice: dict[str, list[int]]) -> dict[str, list[list[float]]]:
    """Score rows whose argmax is the given candidate index per layer."""
    out = {}
    for kind, picks in choice.items():
        rows = []
        for k, i in enumerate(picks):
            row = [0.1 + 0.01 * j + 0.001 * k for j in range(4)]
            row[i] = 0.9
            rows.append(row)
        out[kind] = rows
    return out


def _derived(choice: dict[str, list[int]]):
    spec = prepare(load(RESIDUAL, name="residual.cell"))
    return Derive(_rows(choice)).run(spec).spec


def _op(cell, src, dst) -> str:
    return next(e.op for e in cell.edges if (e.src, e.dst) == (src, dst))


def test_derivation_takes_each_layers_own_argmax():
    choice = {"stage": [0, 3, 1], "down1": [3, 2, 0], "mid": [1, 1, 3], "down2": [2, 0, 2]}
    derived = _derived(choice)
    first = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "skip_connect")
    layer = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "none")
    for kind, picks in choice.items():
        cell = derived.cell(kind)
        want = [first[picks[0]], layer[picks[1]], layer[picks[2]]]
        assert [_op(cell, s, d) for s, d in MIXED] == want, kind
        # the residual skips stay as written
        assert _op(cell, "l1", "l2") == _op(cell, "a2", "l2") == "skip_connect"


def _text(spec) -> str:
    from nasir.search.artefacts import canonical  # the derived.cell text `nasir search` writes

    return canonical(spec)


def test_a_none_layer_is_the_identity():
    """Derived to `none`, layer 2 of the first stage has no weights and the network computes what the
    same network without that layer computes (hand-written below), weight for weight."""
    derived = _derived({"stage": [0, 3, 1], "down1": [0, 0, 0], "mid": [0, 0, 0], "down2": [0, 0, 0]})
    text = _text(derived)
    assert "a2 = none(l1)" in text
    without = text.replace("  a2 = none(l1)\n", "").replace("l2 = skip_connect(l1) + skip_connect(a2)", "l2 = skip_connect(l1)", 1)
    assert without != text
    a = load(text, name="with.cell")
    b = load(without, name="without.cell")
    net_a = network.build(a, plan(a, overrides={"C": 4}), seed=3).eval()
    net_b = network.build(b, plan(b, overrides={"C": 4}), seed=3).eval()
    assert _count(net_a.cells[0]) == _count(net_b.cells[0]) == 2 * (9 * 4 + 16 + 8) + 2 * (25 * 4 + 16 + 8)  # sep 3x3, sep 5x5 (docs/ops.md; affine BN)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net_a(x), net_b(x))


def test_widening_stage_projects_and_the_generated_source_matches():
    derived = _derived({"stage": [1, 0, 3], "down1": [3, 3, 3], "mid": [2, 3, 0], "down2": [0, 1, 2]})
    spec = load(_text(derived), name="d.cell")
    p = plan(spec, overrides={"C": 4})
    net = network.build(spec, p, seed=0).eval()
    proj = net.cells[1].preprocess1.op[1]
    assert (proj.in_channels, proj.out_channels, proj.kernel_size) == (4, 8, (1, 1))
    ns: dict = {"__name__": "generated_chain"}
    exec(torch_source.generate(spec, p), ns)  # the generated module's text, run as Python
    torch.manual_seed(0)
    gen = ns["Network"]().eval()
    assert list(gen.state_dict()) == list(net.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(gen(x), net(x))


def test_cli_search_derive_check_and_onnx_end_to_end(tmp_path, capsys):
    out = tmp_path / "p"
    assert cli.main(["search", str(SPACE), "--data", "digits", "--out", str(out), "--epochs", "1",
                     "--limit-batches", "2", "--set", "C=4"]) == 0  # fmt: skip
    derived = out / "derived.cell"
    spec = load(derived)
    assert not spec.is_search_space and [c.name for c in spec.cells] == list(KINDS)
    assert cli.main(["check", str(derived)]) == 0
    onnx_path = tmp_path / "d.onnx"
    assert cli.main(["compile", str(derived), "--target", "onnx", "-o", str(onnx_path), "--set", "C=4"]) == 0
    net = network.build(spec, plan(spec, overrides={"C": 4}), seed=0).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        want = net(x).numpy()
    sess = ort.InferenceSession(str(onnx_path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (1, 10)
    # the compiled ONNX graph is the derived network at seed 0 (compile's default seed)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_stage_whose_op_sets_differ_in_size_is_refused_at_the_cell():
    """The supernet keeps one alpha matrix per cell kind, so the example's first-layer set swaps `none`
    for `skip_connect` rather than adding it; a stage with sets of 4 and 5 ops is refused, pointed."""
    from nasir.diagnostics import DiagnosticError

    text = RESIDUAL.replace("opset first = {sep_conv_3x3,", "opset first = {none, sep_conv_3x3,")
    assert text != RESIDUAL
    spec = load(text, name="sizes.cell")
    with pytest.raises(DiagnosticError, match="cell 'stage' mixes choices of different sizes"):
        build_supernet(spec, overrides={"C": 4}, channels_last=False)


def test_a_one_input_normal_cell_must_still_keep_its_channels(tmp_path, capsys):
    """Only a reduction stage widens; a normal one-input cell fed other channels is refused, pointed
    at the stack that places it, by `nasir check` (nasir/verify.py chain_problems)."""
    f = tmp_path / "wide.cell"
    text = RESIDUAL.replace("stack 2 cells(2 * C): mid, down2 at 1/2", "stack 1 cells(4 * C): mid")
    f.write_text(text)
    assert cli.main(["check", str(f), "--set", "C=8"]) == 2
    err = capsys.readouterr().err
    line = 1 + text[: text.index("stack 1 cells(4 * C)")].count("\n")
    assert f"wide.cell:{line}:3: error: inconsistent channels: cell 'mid' expects 32 channels, gets 16" in err


def test_the_fused_supernet_projects_a_widening_stage_as_the_plain_one():
    """--fuse runs FusedCell, which prepares its inputs as CellModule does: same weights, same logits
    up to float rounding (docs/performance.md "Fusion")."""
    spec = load(RESIDUAL, name="residual.cell")
    plain = build_supernet(spec, overrides={"C": 4}, seed=0, channels_last=False).eval()
    fused = build_supernet(spec, overrides={"C": 4}, seed=0, channels_last=False, fuse=True).eval()
    assert sum(type(m).__name__ == "FusedCell" for m in fused.net.cells) == 4
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-6)


def _mbconv_params(c: int, e: int, k: int) -> int:
    """MBConv weights at c channels in the supernet (BN without affine): expand 1x1 c -> h, depthwise
    k x k on h, project 1x1 h -> c, h = c * e (docs/ops.md "MBConv")."""
    h = c * e
    return c * h + k * k * h + h * c


def test_mbconv_example_supernet_by_hand():
    sn = build_supernet(load(SPACE), overrides={"C": 4}, seed=0, channels_last=False)
    assert {k: tuple(v.shape) for k, v in sn.alphas.items()} == {k: (3, 4) for k in KINDS}

    def edge(c: int, stride: int) -> int:  # the three MBConvs, plus skip_connect (FactorizedReduce at stride 2)
        return _mbconv_params(c, 3, 3) + _mbconv_params(c, 3, 5) + _mbconv_params(c, 6, 3) + (c * c if stride == 2 else 0)

    cells = [3 * edge(4, 1), 4 * 8 + edge(8, 2) + 2 * edge(8, 1), 3 * edge(8, 1), 8 * 16 + edge(16, 2) + 2 * edge(16, 1)]
    assert [_count(m) for m in sn.net.cells] == cells
    assert _count(sn.net) == 1 * 4 * 9 + 2 * 4 + sum(cells) + 16 * 10 + 10


def test_mbconv_layers_derived_to_skip_connect_are_the_identity():
    spec = prepare(load(SPACE))
    choice = {"stage": [0, 3, 2], "down1": [1, 0, 3], "mid": [3, 3, 3], "down2": [2, 1, 0]}
    derived = Derive(_rows(choice)).run(spec).spec
    mb = ("mbconv(k = 3, e = 3)", "mbconv(k = 5, e = 3)", "mbconv(k = 3, e = 6)", "skip_connect")
    for kind, picks in choice.items():
        assert [_op(derived.cell(kind), s, d) for s, d in (("x", "l1"), ("l1", "l2"), ("l2", "l3"))] == [mb[i] for i in picks]
    text = _text(derived)
    d = load(text, name="d.cell")
    p = plan(d, overrides={"C": 4})
    net = network.build(d, p, seed=0).eval()
    mid = net.cells[2]
    assert _count(mid) == 0  # every layer of `mid` dropped
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(mid(x), x)
    # stage keeps two MBConvs (affine BN in the derived network: 2 per channel of each BN)
    e33 = _mbconv_params(4, 3, 3) + 2 * 12 + 2 * 12 + 2 * 4
    e36 = _mbconv_params(4, 6, 3) + 2 * 24 + 2 * 24 + 2 * 4
    assert _count(net.cells[0]) == e33 + e36
    ns: dict = {"__name__": "generated_mbconv_chain"}
    exec(torch_source.generate(d, p), ns)  # the generated module's text, run as Python
    torch.manual_seed(0)
    gen = ns["Network"]().eval()
    assert list(gen.state_dict()) == list(net.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(gen(x), net(x))
