"""The operation registry: the one place that knows every op name, its parameters and its builder.

The registry itself does not import torch (so `nasir check` stays fast); `OpDef.build` imports the
PyTorch building blocks lazily. Structures follow shared/design/ops.md exactly.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import attrs

from nasir.diagnostics import did_you_mean


@attrs.frozen
class OpDef:
    name: str
    builder: str  # a function of nasir.targets.blocks: (C, stride, affine, **params) -> nn.Module
    params: MappingProxyType = attrs.field(factory=lambda: MappingProxyType({}), converter=MappingProxyType)
    parameter_free: bool = False
    # Identity ops are exempt from drop-path during retraining (ops.md, "A DARTS cell").
    is_identity: bool = False
    is_zero: bool = False
    is_pool: bool = False

    def build(self, C: int, stride: int = 1, affine: bool = True) -> Any:
        from nasir.targets import blocks

        return getattr(blocks, self.builder)(C, stride, affine, **self.params)


def _op(name: str, builder: str, **kw: Any) -> OpDef:
    flags = {k: kw.pop(k) for k in ("parameter_free", "is_identity", "is_zero", "is_pool") if k in kw}
    return OpDef(name, builder, kw, **flags)


# Parameter-free at stride 1; skip_connect at stride 2 is a FactorizedReduce with weights.
REGISTRY: MappingProxyType[str, OpDef] = MappingProxyType(
    {
        d.name: d
        for d in (
            _op("none", "zero", parameter_free=True, is_zero=True),
            _op("skip_connect", "skip_connect", parameter_free=True, is_identity=True),
            _op("max_pool_3x3", "pool", kind="max", kernel=3, parameter_free=True, is_pool=True),
            _op("avg_pool_3x3", "pool", kind="avg", kernel=3, parameter_free=True, is_pool=True),
            _op("sep_conv_3x3", "sep_conv", kernel=3),
            _op("sep_conv_5x5", "sep_conv", kernel=5),
            _op("sep_conv_7x7", "sep_conv", kernel=7),
            _op("dil_conv_3x3", "dil_conv", kernel=3, dilation=2),
            _op("dil_conv_5x5", "dil_conv", kernel=5, dilation=2),
            _op("conv_7x1_1x7", "conv_7x1_1x7"),
            _op("nor_conv_1x1", "relu_conv_bn", kernel=1),
            _op("nor_conv_3x3", "relu_conv_bn", kernel=3),
        )
    }
)

DARTS_OPS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)  # fmt: skip
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


# The recurrent cell's ops (DARTS' rnn PRIMITIVES; docs/recurrent.md): the activation f of a gated edge
# s_p + sigmoid(c) * (f(g) - s_p). `none` is the zero op of both kinds of cell (the registry's entry
# above). They are listed apart from REGISTRY so that a convolutional cell still reports them as unknown
# (nasir/rnn/lower.py); nasir/rnn/cell.py computes them, `builder` names the activation. The activations have no weights
# (W_i belongs to the node, shared by all its edges), hence parameter-free.
RECURRENT: MappingProxyType[str, OpDef] = MappingProxyType(
    {
        d.name: d
        for d in (
            REGISTRY["none"],
            _op("tanh", "tanh", parameter_free=True),
            _op("relu", "relu", parameter_free=True),
            _op("sigmoid", "sigmoid", parameter_free=True),
            _op("identity", "identity", parameter_free=True, is_identity=True),
        )
    }
)


def lookup(name: str) -> OpDef | None:
    return REGISTRY.get(name)


def op_def(name: str) -> OpDef:
    """The definition of an op of either kind of cell (convolutional first, then recurrent); KeyError if none."""
    d = REGISTRY.get(name) or RECURRENT.get(name)
    if d is None:
        raise KeyError(name)
    return d


def unknown_op_hint(name: str) -> str:
    return did_you_mean(name, REGISTRY) or "known ops: " + ", ".join(REGISTRY)
