"""The registry of macro layer kinds: what a stem or head layer of a `network` block may be.

One entry per kind holds everything nasir knows about it (docs/network.md, "Layer kinds"):
- where it may stand (`stem`, `head`), its one positional argument and keyword arguments;
- its channel rule (`out_channels`) and stride rule (`stride`), which `nasir.macro.elaborate`
  applies to record C_in / C_out / stride / scale on every `LayerPlan`;
- in a head, which part of the classifier it belongs to (`slot`: before the flatten, after it,
  or the classifier itself), also recorded on the `LayerPlan`;
- its module builder (`build`, for nasir.targets.network) and its source emission (`emit`, for
  nasir.targets.torch_source): the two spell the same constructor, and
  tests/test_macro_layers.py checks them against each other for every kind.

The elaborator, the module builder, the source emitter and the detection backbone read this table;
none of them names a layer kind. Adding a kind is one `LayerKind` entry here plus its tests
(docs/network.md shows the diff of one such addition). torch is imported only inside `build`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

# A LayerPlan (nasir.macro) is passed to the rules below; it is not imported here, so that the
# macro can import this table without a cycle.
Rule = Callable[[Any], Any]


def _same(x: Any) -> int:
    return int(x.C_in)


def _one(x: Any) -> int:
    return 1


@attrs.frozen
class LayerKind:
    """One layer kind. `slot(x, pooled)` is the head part it goes to: "pre" (before the flatten),
    "post" (after it), "classifier"; `pools` says the spatial size is 1 x 1 after it."""

    name: str
    doc: str
    places: frozenset[str]
    arg: str | None = None  # what the one positional argument is; None: no argument
    whole: bool = False  # the argument must be a whole number
    keywords: tuple[str, ...] = ()  # keyword arguments (whole numbers), e.g. stride
    out_channels: Callable[[Any], int] = _same
    stride: Callable[[Any], int] = _one
    pools: bool = False
    slot: Callable[[Any, bool], str] = lambda x, pooled: "pre"
    build: Callable[[Any], Any] = lambda x: None
    emit: Callable[[Any], str] = lambda x: ""


def _nn() -> Any:
    from torch import nn

    return nn


def _conv3x3_stride(x: Any) -> int:
    return int(x.kw("stride", 1))


LAYERS: Mapping[str, LayerKind] = {
    k.name: k
    for k in (
        LayerKind(
            "conv3x3", "3 x 3 convolution, no bias, padding 1: conv3x3(channels, stride = s)", frozenset({"stem"}),
            arg="channels", whole=True, keywords=("stride",), out_channels=lambda x: int(x.args[0]),
            stride=_conv3x3_stride,
            build=lambda x: _nn().Conv2d(x.C_in, x.C_out, 3, stride=x.stride, padding=1, bias=False),
            emit=lambda x: f"nn.Conv2d({x.C_in}, {x.C_out}, 3, stride={x.stride}, padding=1, bias=False)",
        ),
        LayerKind(
            "bn", "batch normalisation over the channels", frozenset({"stem", "head"}),
            build=lambda x: _nn().BatchNorm2d(x.C_in), emit=lambda x: f"nn.BatchNorm2d({x.C_in})",
        ),
        LayerKind(
            "relu", "ReLU (before the flatten until the head has pooled, after it once it has)",
            frozenset({"stem", "head"}), slot=lambda x, pooled: "post" if pooled else "pre",
            build=lambda x: _nn().ReLU(inplace=False), emit=lambda x: "nn.ReLU(inplace=False)",
        ),
        LayerKind(
            "global_avg_pool", "average over the whole feature map (1 x 1 after it)", frozenset({"head"}), pools=True,
            build=lambda x: _nn().AdaptiveAvgPool2d(1), emit=lambda x: "nn.AdaptiveAvgPool2d(1)",
        ),
        LayerKind(
            "avg_pool", "average pooling, window = stride = the pool size (ImageNet head: avg_pool(7))",
            frozenset({"head"}), arg="pool size", whole=True, pools=True, stride=lambda x: int(x.args[0]),
            build=lambda x: _nn().AvgPool2d(int(x.args[0])), emit=lambda x: f"nn.AvgPool2d({int(x.args[0])})",
        ),
        LayerKind(
            "dropout", "dropout on the flattened features", frozenset({"head"}), arg="drop probability",
            slot=lambda x, pooled: "post",
            build=lambda x: _nn().Dropout(float(x.args[0])), emit=lambda x: f"nn.Dropout({float(x.args[0])})",
        ),
        LayerKind(
            "linear", "the classifier: a linear layer to `classes` outputs", frozenset({"head"}), arg="classes",
            whole=True, out_channels=lambda x: int(x.args[0]), slot=lambda x, pooled: "classifier",
            build=lambda x: _nn().Linear(x.C_in, x.C_out), emit=lambda x: f"nn.Linear({x.C_in}, {x.C_out})",
        ),
    )
}  # fmt: skip


def kinds_for(place: str) -> set[str]:
    """The layer kinds allowed in a `stem` or a `head`."""
    return {n for n, k in LAYERS.items() if place in k.places}
