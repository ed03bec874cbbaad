"""Cells with more than two inputs (issue 16; docs/network.md "Cells with more than two inputs").

An n-input cell reads the last n states of the network's history (stem outputs, then every block's
output), the first state standing in for missing earlier ones (DARTS's s0 = s1 = stem); each input
is a 1 x 1 ReLUConvBN, or one FactorizedReduce per reduction between it and the cell's last input.
The numbers below are counted by hand from those rules, not from the code.
"""

from __future__ import annotations

import json
import textwrap

import torch
from helpers import errors_of, spec_of

from nasir.cli import main
from nasir.macro import plan
from nasir.targets import blocks
from nasir.targets.network import build

# Parameter-free ops (skip_connect is a FactorizedReduce at stride 2), so that every weight of a
# normal cell is in its input preprocessing.
THREE = """
cell normal {
  inputs a, b, c
  nodes  n0, n1
  edges  a -> n0 : skip_connect
  edges  b -> n0 : max_pool_3x3
  edges  c -> n1 : skip_connect
  edges  n0 -> n1 : avg_pool_3x3
  output concat(n0, n1)
}

cell reduce like normal {
  stride 2 from inputs
}

network net(C = 4, layers = 4, classes = 10) {
  input (1, 8, 8)
  stem  conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  head  global_avg_pool, linear(classes)
}
"""


def relu_conv_bn(c_in: int, c_out: int) -> int:  # 1 x 1 conv without bias, BN weight and bias
    return c_in * c_out + 2 * c_out


def factorized_reduce(c_in: int, c_out: int) -> int:  # two 1 x 1 convs c_in -> c_out / 2, BN(c_out)
    return 2 * c_in * (c_out // 2) + 2 * c_out


def test_three_input_network_structure_and_parameters_by_hand():
    spec = spec_of(THREE)
    p = plan(spec)
    # layers = 4, reductions at 4 * 1 // 3 = 1 and 4 * 2 // 3 = 2; C doubles at each; output 2 C (concat of 2).
    # History (channels, scale): stem (12, 1) twice, then cell outputs (8, 1), (16, 2), (32, 4), (32, 4).
    # Cell i reads history positions [i, i + 1, i + 2] clipped at 0 from below: (0, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4).
    assert [(b.cell, b.C, b.in_channels, b.in_reductions) for b in p.cells] == [
        ("normal", 4, (12, 12, 12), (0, 0, 0)),
        ("reduce", 8, (12, 12, 8), (0, 0, 0)),
        ("reduce", 16, (12, 8, 16), (1, 1, 0)),  # the stem and cell 0 are one reduction (cell 1) away
        ("normal", 16, (8, 16, 32), (2, 1, 0)),  # cell 0 is two reductions away: two FactorizedReduce
    ]
    net = build(spec, seed=0)
    pre = [[type(getattr(m, f"preprocess{j}")) for j in range(3)] for m in net.cells]
    FR, RCB = blocks.FactorizedReduce, blocks.ReLUConvBN
    assert pre == [[RCB] * 3, [RCB] * 3, [FR, FR, RCB], [torch.nn.Sequential, FR, RCB]]
    assert [type(x) for x in net.cells[3].preprocess0] == [FR, FR]

    stem = 1 * 12 * 9 + 2 * 12  # conv3x3 1 -> 12, BN
    cell0 = 3 * relu_conv_bn(12, 4)
    cell1 = 2 * relu_conv_bn(12, 8) + relu_conv_bn(8, 8) + 2 * factorized_reduce(8, 8)  # the two skips at stride 2
    cell2 = factorized_reduce(12, 16) + factorized_reduce(8, 16) + relu_conv_bn(16, 16) + 2 * factorized_reduce(16, 16)
    cell3 = factorized_reduce(8, 16) + factorized_reduce(16, 16) + factorized_reduce(16, 16) + relu_conv_bn(32, 16)
    head = 32 * 10 + 10
    assert (stem, cell0, cell1, cell2, cell3, head) == (132, 168, 464, 1248, 1280, 330)
    assert sum(x.numel() for x in net.parameters()) == 3622


def test_each_cell_reads_the_states_the_rule_names():
    spec = spec_of(THREE)
    net = build(spec, seed=0).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        h = [net.stem(x)] * 2
        for m, (i, j, k) in zip(net.cells, [(0, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4)]):  # by hand, see above
            h.append(m(h[j], h[k], None, [h[i]]))
        want = net.classifier(torch.flatten(net.head_pre(h[-1]), 1))
        assert [tuple(s.shape[1:]) for s in h[2:]] == [(8, 8, 8), (16, 4, 4), (32, 2, 2), (32, 2, 2)]
        assert torch.equal(net(x), want)
        # Cell 3 does read cell 0 (two reductions away): changing it changes the output.
        m = net.cells[3]
        assert not torch.equal(m(h[3], h[4], None, [h[2]]), m(h[3], h[4], None, [h[2] + 1]))


def test_two_stems_the_first_stands_in_for_missing_states():
    # ImageNet-style stems: stem0 at 1/2 (6 channels), stem1 at 1/4 (8 channels).
    spec = spec_of(THREE.replace("stem  conv3x3(3 * C), bn",
                                 "stem  conv3x3(6, stride = 2), bn\n  stem  relu, conv3x3(8, stride = 2), bn")
                   .replace("input (1, 8, 8)", "input (1, 32, 32)"))  # fmt: skip
    p = plan(spec)
    # History: stem0 (6, 2), stem1 (8, 4); cell 0 reads (stem0, stem0, stem1), each stem0 one halving away.
    assert (p.cells[0].in_channels, p.cells[0].in_reductions) == ((6, 6, 8), (1, 1, 0))
    assert (p.cells[1].in_channels, p.cells[1].in_reductions) == ((6, 8, 8), (1, 0, 0))
    net = build(spec, seed=0).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        s0 = net.stem0(x)
        h = [s0, net.stem1(s0)]
        for m, (i, j, k) in zip(net.cells, [(0, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4)]):
            h.append(m(h[j], h[k], None, [h[i]]))
        assert torch.equal(net(x), net.classifier(torch.flatten(net.head_pre(h[-1]), 1)))


def test_generated_torch_source_is_the_built_network():
    from nasir.targets.torch_source import generate

    spec = spec_of(THREE)
    p = plan(spec)
    ns: dict = {}
    exec(compile(generate(spec, p), "generated.py", "exec"), ns)  # noqa: S102 - our own generated module
    torch.manual_seed(0)
    theirs = ns["Network"]().eval()
    ours = build(spec, p, seed=0).eval()
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert "cells.3.preprocess0.1.conv_1.weight" in a and "cells.3.preprocess2.op.1.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same construction order
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))


def test_onnx_export_runs_and_matches(tmp_path):
    from nasir.targets.export import onnx_parity, to_onnx

    net = build(spec_of(THREE), seed=0).eval()
    path = to_onnx(net, torch.randn(1, 1, 8, 8), tmp_path / "three.onnx")
    assert onnx_parity(net, path) < 1e-4


def test_detection_backbone_reads_the_same_history():
    from nasir.targets.detection import FeatureLevel, NasBackbone

    net = build(spec_of(THREE), seed=0).eval()
    levels = [FeatureLevel(index=i, name=str(i), stride=1, channels=0) for i in range(4)]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        _, _, outs = net.features(x)
        got = NasBackbone(net, levels)(x)
    assert [torch.equal(got[str(i)], outs[i]) for i in range(4)] == [True] * 4


SPACE = """
opset small = {none, max_pool_3x3, skip_connect, sep_conv_3x3}
cell normal {
  inputs c_k3, c_k2, c_k1
  nodes  n0, n1
  edges  * -> n* : choice(small)
  output concat(n0, n1)
  keep 2 inputs per node
}
cell reduce like normal {
  stride 2 from inputs
}
network tiny(C = 4, layers = 3, classes = 10) {
  input (1, 8, 8)
  stem  conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  head  global_avg_pool, linear(classes)
}
"""


def test_fused_supernet_cell_equals_the_plain_one():
    from nasir.search.supernet import build_supernet

    spec = spec_of(SPACE)
    torch.manual_seed(0)
    plain = build_supernet(spec, channels_last=False).eval()
    torch.manual_seed(0)
    fused = build_supernet(spec, channels_last=False, fuse=True).eval()
    fused.load_state_dict(plain.state_dict())
    assert sum(type(m).__name__ == "FusedCell" for m in fused.net.cells) == 3
    # DARTS's search cells (model_search.py, MixedOp) put a BN after each pooling candidate; a cell with
    # more inputs is a DARTS cell too (NAS-Bench-201's one-input cells have none).
    mixed = plain.net.cells[0]._ops[0]
    pool = mixed._ops[[mixed.candidates[i] for i in mixed.index].index("max_pool_3x3")]
    assert [type(m).__name__ for m in pool] == ["MaxPool2d", "BatchNorm2d"]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-6)


def test_a_tiny_search_over_three_input_cells_derives_and_rechecks(tmp_path):
    from nasir.api import load
    from nasir.search.runner import search

    path = tmp_path / "space.cell"
    path.write_text(textwrap.dedent(SPACE).lstrip())
    result = search(path, data="digits", out=tmp_path / "run", epochs=1, batch_size=16, limit_batches=2, seed=0,
                    device="cpu", progress=False)  # fmt: skip
    derived = load(result.out / "derived.cell")
    alphas = json.loads((result.out / "alphas.json").read_text())
    # DARTS's genotype parse (model_search.py), re-done here: per node the two edges with the largest
    # non-`none` softmax weight, each with that op. Rows follow `* -> n*`: n0 <- c_k3, c_k2, c_k1;
    # n1 <- c_k3, c_k2, c_k1, n0.
    ops_ = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    rows = [(src, "n0") for src in ("c_k3", "c_k2", "c_k1")] + [(src, "n1") for src in ("c_k3", "c_k2", "c_k1", "n0")]
    for c in derived.cells:
        assert c.input_names == ("c_k3", "c_k2", "c_k1") and not c.is_search_space
        soft = torch.tensor(alphas[c.name], dtype=torch.float64).softmax(-1)
        assert soft.shape == (7, 4)
        want = set()
        for node in ("n0", "n1"):
            best = sorted(((max(soft[r, 1:]).item(), r) for r, (_, dst) in enumerate(rows) if dst == node), reverse=True)[:2]
            want |= {(rows[r][0], node, ops_[1 + int(soft[r, 1:].argmax())]) for _, r in best}
        assert {(e.src, e.dst, e.op) for e in c.edges} == want
    assert main(["check", str(result.out / "derived.cell")]) == 0
    assert sorted(c.name for c in derived.cells) == ["normal", "reduce"]
    from nasir.targets.export import onnx_parity

    net = build(derived, seed=0).eval()  # the search exports this seeded network
    assert onnx_parity(net, result.out / "derived.onnx") < 1e-4


TWO_STEMS = "stem  conv3x3(6), bn\n  stem  relu, conv3x3(8, stride = {s}), bn"


def test_a_macro_that_cannot_feed_an_input_is_an_error_at_the_stack(tmp_path, capsys):
    # stem0 at 1/1, stem1 at 1/3: cell 0's first inputs read stem0, three times finer than its last
    # input; a FactorizedReduce halves, so no chain of them bridges a factor of three.
    text = THREE.replace("stem  conv3x3(3 * C), bn", TWO_STEMS.format(s=3))
    message = ("cell 'normal' cannot be fed here: its input 'a' reads a state at 1/1 of the input resolution and its "
               "last input one at 1/3, 3 times coarser; factorized reductions halve, so only a power of two can be bridged")  # fmt: skip
    assert errors_of(text) == [(19, 3, message)]
    path = tmp_path / "t.cell"
    path.write_text(textwrap.dedent(text).lstrip())
    assert main(["check", str(path)]) == 2
    assert f"t.cell:19:3: error: {message}" in capsys.readouterr().err
    # With stem1 at 1/2 the same macro feeds it (one FactorizedReduce).
    net = build(spec_of(THREE.replace("stem  conv3x3(3 * C), bn", TWO_STEMS.format(s=2))), seed=0).eval()
    assert net.cells[0].preprocess0.conv_1.in_channels == 6 and net(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_an_odd_channel_count_under_a_factorized_reduce_is_an_error():
    # C = 3 and stem0 one halving finer than stem1: cell 0 halves inputs a and b with FactorizedReduce(., 3).
    text = THREE.replace("stem  conv3x3(3 * C), bn", TWO_STEMS.format(s=2)).replace("C = 4", "C = 3")
    assert errors_of(text) == [(19, 3, "cell 'normal' cannot be fed here: its input 'a' is halved by a factorized "
                                       "reduction, which needs an even channel count, and the cell has C = 3")]  # fmt: skip


def test_an_autodl_checkpoint_is_refused_for_three_input_cells():
    # AutoDL's TinyNetwork layout maps onto one-input (NAS-Bench-201) cells only; a three-input cell is not one.
    from nasir.autodl import from_tiny_network
    from nasir.diagnostics import DiagnosticError

    net = build(spec_of(THREE), seed=0)
    try:
        from_tiny_network(net, {}, "autodl.pth")
    except DiagnosticError as e:
        assert "the network has no NAS-Bench-201 cells (one input per cell)" in e.diagnostics[0].message
    else:
        raise AssertionError("a network of three-input cells took an AutoDL TinyNetwork checkpoint")
