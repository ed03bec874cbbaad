"""The elaborated network (nasir/macro.py Plan) carries channels and strides per layer and cell, and the
layer registry (nasir/layers.py) is the one place a stem/head layer kind is defined.

Expected values are hand computations from the DARTS macro (docs/ops.md "A DARTS cell": a cell outputs
len(concat) x C channels; `stride 2 from inputs` halves the map) written out below."""

from __future__ import annotations

import pytest
import torch
from helpers import EXAMPLES
from torch import nn

from nasir import layers
from nasir.api import load
from nasir.macro import CellPlan, LayerPlan, ResidualPlan, plan
from nasir.targets import detection, network, torch_source


def _plan(path, **overrides):
    spec = load(path)
    return spec, plan(spec, overrides=overrides)


def test_imagenet_plan_records_channels_strides_and_scales_by_hand():
    spec, p = _plan(EXAMPLES / "darts_v2_imagenet.cell", C=8, layers=4)
    stem0, stem1 = p.stems
    assert [(x.name, x.C_in, x.C_out, x.stride, x.scale) for x in stem0] == [
        ("conv3x3", 3, 4, 2, 2), ("bn", 4, 4, 1, 2), ("relu", 4, 4, 1, 2), ("conv3x3", 4, 8, 2, 4), ("bn", 8, 8, 1, 4)]
    assert [(x.name, x.C_in, x.C_out, x.stride, x.scale) for x in stem1] == [
        ("relu", 8, 8, 1, 4), ("conv3x3", 8, 8, 2, 8), ("bn", 8, 8, 1, 8)]
    # 4 cells, reductions at 4 * 1 // 3 = 1 and 4 * 2 // 3 = 2; every cell concatenates 4 nodes.
    cells = [(b.cell, b.C_pp, b.C_p, b.C, b.C_out, b.stride, b.scale, b.reduction_prev) for b in p.body]
    assert cells == [
        ("normal", 8, 8, 8, 32, 1, 8, True),
        ("reduce", 8, 32, 16, 64, 2, 16, False),
        ("reduce", 32, 64, 32, 128, 2, 32, True),
        ("normal", 64, 128, 32, 128, 1, 32, True),
    ]
    assert [(x.name, x.C_in, x.C_out, x.stride, x.scale, x.slot) for x in p.head] == [
        ("avg_pool", 128, 128, 7, 224, "pre"), ("linear", 128, 1000, 1, 224, "classifier")]
    assert p.out_channels == 128 and p.stem_channels == 8 and p.stem_scale == 8


def test_nb201_residual_blocks_read_the_previous_output_channels():
    spec, p = _plan(EXAMPLES / "nb201.cell", C=4, N=1)
    kinds = [(type(b).__name__, getattr(b, "C_in", None) or b.C_p, b.C_out, b.stride, b.scale) for b in p.body]
    assert kinds == [("CellPlan", 4, 4, 1, 1), ("ResidualPlan", 4, 8, 2, 2), ("CellPlan", 8, 8, 1, 2),
                     ("ResidualPlan", 8, 16, 2, 4), ("CellPlan", 16, 16, 1, 4)]  # fmt: skip
    # head: bn, relu before the pool go before the flatten; the classifier reads 4C.
    assert [(x.name, x.slot, x.C_in) for x in p.head] == [
        ("bn", "pre", 16), ("relu", "pre", 16), ("global_avg_pool", "pre", 16), ("linear", "classifier", 16)]


def test_detection_levels_are_read_off_the_plan():
    spec, p = _plan(EXAMPLES / "darts_v2_imagenet.cell", C=8, layers=4)
    levels = detection.feature_levels(spec, p)
    # last block before each reduction (0, 1) and the last block (3), with the hand values above
    assert [(lv.index, lv.channels, lv.stride) for lv in levels] == [(0, 32, 8), (1, 64, 16), (3, 128, 32)]


_EXAMPLE_LAYERS = {
    "conv3x3": LayerPlan("conv3x3", (6,), (("stride", 2),), C_in=3, C_out=6, stride=2),
    "bn": LayerPlan("bn", C_in=5, C_out=5),
    "relu": LayerPlan("relu", C_in=5, C_out=5),
    "global_avg_pool": LayerPlan("global_avg_pool", C_in=5, C_out=5),
    "avg_pool": LayerPlan("avg_pool", (7,), C_in=5, C_out=5, stride=7),
    "dropout": LayerPlan("dropout", (0.25,), C_in=5, C_out=5),
    "linear": LayerPlan("linear", (10,), C_in=5, C_out=10),
}


def test_every_registered_kind_has_an_example_here():
    assert set(_EXAMPLE_LAYERS) == set(layers.LAYERS)


@pytest.mark.parametrize("name", sorted(_EXAMPLE_LAYERS))
def test_builder_and_source_emission_spell_the_same_module(name):
    x = _EXAMPLE_LAYERS[name]
    built = layers.LAYERS[name].build(x)
    emitted = eval(layers.LAYERS[name].emit(x), {"nn": nn})  # the generated module's text for this layer
    assert repr(built) == repr(emitted)
    torch.manual_seed(0)
    a = layers.LAYERS[name].build(x)
    torch.manual_seed(0)
    b = eval(layers.LAYERS[name].emit(x), {"nn": nn})
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


def test_stem_and_head_parameters_by_hand():
    spec, p = _plan(EXAMPLES / "darts_v2_imagenet.cell", C=8, layers=4)
    net = network.Network(spec, p)
    count = lambda m: sum(t.numel() for t in m.parameters())  # noqa: E731
    # stem0: conv 3->4 (3*4*9) + bn(4) (8) + conv 4->8 (4*8*9) + bn(8) (16); stem1: conv 8->8 + bn(8)
    assert count(net.stem0) == 3 * 4 * 9 + 8 + 4 * 8 * 9 + 16
    assert count(net.stem1) == 8 * 8 * 9 + 16
    assert count(net.classifier) == 128 * 1000 + 1000
    assert isinstance(net.head_pre[0], nn.AvgPool2d) and net.head_pre[0].kernel_size == 7


def test_a_new_layer_kind_is_one_registry_entry(monkeypatch):
    """docs/network.md's example addition (a `maxpool` stem layer), made at run time: the elaborator,
    the module builder and the source emitter pick it up with no other change."""
    kind = layers.LayerKind(
        "maxpool", "3 x 3 max pooling, stride 2, padding 1", frozenset({"stem"}), stride=lambda x: 2,
        build=lambda x: nn.MaxPool2d(3, stride=2, padding=1), emit=lambda x: "nn.MaxPool2d(3, stride=2, padding=1)")  # fmt: skip
    monkeypatch.setitem(layers.LAYERS, "maxpool", kind)
    text = (EXAMPLES / "darts_v2.cell").read_text()
    assert "stem  conv3x3(3 * C), bn\n" in text
    spec = load(text.replace("stem  conv3x3(3 * C), bn\n", "stem  conv3x3(3 * C), bn, maxpool\n"), name="d.cell")
    p = plan(spec, overrides={"C": 2, "layers": 3})
    assert [(x.name, x.scale) for x in p.stems[0]] == [("conv3x3", 1), ("bn", 1), ("maxpool", 2)]
    assert p.body[0].scale == 2 and p.body[1].scale == 4  # the reduction at 1 halves again
    assert "nn.MaxPool2d(3, stride=2, padding=1)" in torch_source.network_class(spec, p)[0]
    assert isinstance(network.Network(spec, p).stem[2], nn.MaxPool2d)


def test_plan_types_are_the_ones_the_targets_walk():
    spec, p = _plan(EXAMPLES / "nb201.cell", C=4, N=1)
    assert all(isinstance(b, CellPlan | ResidualPlan) for b in p.body)
