"""PyTorch building blocks of the DARTS family, the op builders the registry calls, and counters.

Every structure follows docs/ops.md ("Building blocks", "The DARTS op set", "Macro networks",
"NAS-Bench-201", "MBConv", "AutoDL's ops"). Module and attribute names (`op`, `conv_1`, `features`, `classifier`, ...) and the
order inside every `nn.Sequential` follow the reference implementations (quark0/darts `operations.py`
and `model.py`; NAS-Bench-201's `ResNetBasicblock`), so state dicts line up and parameter counts match
the papers.

The op builders (`zero`, `skip_connect`, `pool`, `sep_conv`, `dil_conv`, `conv_7x1_1x7`, `conv_3x1_1x3`,
`relu_conv_bn`, `dual_sep_conv`, `mbconv`) are called by `nasir.ops.OpDef.build` as `builder(C, stride, affine, **params)`.

Nothing here branches on tensor values, so every block can be traced and exported to ONNX.
`count_macs` and `count_params` implement the counting rules of docs/ops.md.
"""

# Channel arguments are named C, C_in, C_out as in docs/ops.md and the DARTS reference.

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasir import ops as _ops

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "DilConv",
    "DualSepConv",
    "FactorizedReduce",
    "Identity",
    "MBConv",
    "ReLUConvBN",
    "ResidualBlock",
    "SepConv",
    "Zero",
    "conv_3x1_1x3",
    "conv_7x1_1x7",
    "count_macs",
    "count_params",
    "dil_conv",
    "drop_path",
    "dual_sep_conv",
    "mbconv",
    "pool",
    "relu_conv_bn",
    "scaled_batch_norm",
    "sep_conv",
    "skip_connect",
    "zero",
]


# --------------------------------------------------------------------------------------------------
# Building blocks (docs/ops.md, "Building blocks")
# --------------------------------------------------------------------------------------------------


class ReLUConvBN(nn.Module):
    """ReLU -> conv k x k (stride, padding, no bias) -> BN(C_out) (docs/ops.md, "Building blocks")."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> depthwise dilated conv k x k (groups=C_in) -> pointwise 1x1 C_in->C_out -> BN(C_out) (docs/ops.md)."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in, bias=False
            ),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two DilConv-like halves with dilation 1: (C_in->C_in, stride) then (C_in->C_out, stride 1) (docs/ops.md).

    Each half is ReLU -> depthwise k x k -> pointwise 1x1 -> BN; all eight layers sit in one `op`
    Sequential, as in the DARTS reference.
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs C_in -> C_out/2 on x and on x[:, :, 1:, 1:], concat, BN(C_out) (docs/ops.md).

    As in the reference, the spatial size of the input must be even (the two halves differ otherwise).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(self.relu(x))

    def after_relu(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Everything after the ReLU (a fused supernet computes the ReLU once for several ops);
        `scale` multiplies the output inside the BN (`scaled_batch_norm`)."""
        if torch.is_grad_enabled() and not torch.jit.is_tracing() and x.device.type == "cpu" and x.shape[1] < 8:
            return self._dense(x, scale)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out) if scale is None else scaled_batch_norm(self.bn, out, scale)

    def _dense(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The same computation in NCHW, for the CPU channels_last case that torch 2.14's oneDNN gets wrong.

        The weight gradient of a 1x1 stride-2 convolution with fewer than 8 input channels in NHWC
        corrupts the heap on CPU (found with PC-DARTS, whose partial channels make C_in small); NCHW
        inputs and weights take another kernel. The output goes back to the input's layout.
        """
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        xd = x.contiguous()
        w1 = self.conv_1.weight.clone(memory_format=torch.contiguous_format)
        w2 = self.conv_2.weight.clone(memory_format=torch.contiguous_format)
        out = torch.cat([F.conv2d(xd, w1, stride=2), F.conv2d(xd[:, :, 1:, 1:], w2, stride=2)], dim=1)
        out = self.bn(out) if scale is None else scaled_batch_norm(self.bn, out, scale)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * bn(x) for a non-affine BN in one pass: the scalar `scale` enters as the BN's affine weight.

    The same computation and running-statistics update as `nn.BatchNorm2d.forward` (num_batches_tracked,
    momentum None as a cumulative average); only the output is multiplied. A fused supernet folds a
    candidate's softmax weight in here, so neither the forward nor the backward pass needs a separate
    product, and the weight's gradient comes out of the BN backward (docs/performance.md, "Fusion").
    """
    if bn.affine:
        raise ValueError("scaled_batch_norm folds the scale into the BN weight; the BN must be non-affine")
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return F.batch_norm(x, bn.running_mean if keep else None, bn.running_var if keep else None,
                        scale.reshape(1).expand(x.shape[1]).contiguous(), None, batch_stats, factor, bn.eps)  # fmt: skip


class Zero(nn.Module):
    """The `none` op: multiplies by 0, subsampled by the stride (docs/ops.md, "Building blocks")."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Identity):
    """The identity op (skip_connect at stride 1; docs/ops.md). A subclass of `nn.Identity`."""


# --------------------------------------------------------------------------------------------------
# Op builders called by the registry (docs/ops.md, "The DARTS op set" and "NAS-Bench-201")
# --------------------------------------------------------------------------------------------------


def zero(C: int, stride: int, affine: bool) -> nn.Module:
    """`none`: Zero(stride)."""
    return Zero(stride)


def skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    """`skip_connect`: Identity at stride 1, else FactorizedReduce(C, C)."""
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


def pool(C: int, stride: int, affine: bool, kind: str = "max", kernel: int = 3) -> nn.Module:
    """`max_pool_3x3` / `avg_pool_3x3`: pooling k x k, stride, padding k // 2; avg excludes the padding."""
    if kind == "max":
        return nn.MaxPool2d(kernel, stride=stride, padding=kernel // 2)
    if kind == "avg":
        return nn.AvgPool2d(kernel, stride=stride, padding=kernel // 2, count_include_pad=False)
    raise ValueError(f"unknown pooling kind {kind!r} (expected 'max' or 'avg')")


def sep_conv(C: int, stride: int, affine: bool, kernel: int = 3) -> nn.Module:
    """`sep_conv_kxk`: SepConv(C, C, k, stride, k // 2)."""
    return SepConv(C, C, kernel, stride, kernel // 2, affine=affine)


def dil_conv(C: int, stride: int, affine: bool, kernel: int = 3, dilation: int = 2) -> nn.Module:
    """`dil_conv_kxk`: DilConv(C, C, k, stride, dilation * (k - 1) // 2, dilation) (padding 2 / 4 for 3 / 5)."""
    return DilConv(C, C, kernel, stride, dilation * (kernel - 1) // 2, dilation, affine=affine)


def conv_7x1_1x7(C: int, stride: int, affine: bool) -> nn.Module:
    """`conv_7x1_1x7`: ReLU -> conv 1x7 (stride (1, s)) -> conv 7x1 (stride (s, 1)) -> BN(C)."""
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


def relu_conv_bn(C: int, stride: int, affine: bool, kernel: int = 3) -> nn.Module:
    """NAS-Bench-201 `nor_conv_kxk` (and AutoDL's `nor_conv_7x7`): ReLUConvBN(C, C, k, stride, k // 2)."""
    return ReLUConvBN(C, C, kernel, stride, kernel // 2, affine=affine)


def conv_3x1_1x3(C: int, stride: int, affine: bool) -> nn.Module:
    """AutoDL's `conv_3x1_1x3`: ReLU -> conv 1x3 (stride (1, s)) -> conv 3x1 (stride (s, 1)) -> BN(C) (docs/ops.md)."""
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 3), stride=(1, stride), padding=(0, 1), bias=False),
        nn.Conv2d(C, C, (3, 1), stride=(stride, 1), padding=(1, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


class DualSepConv(nn.Module):
    """AutoDL's DualSepConv (`dua_sepc_kxk`, docs/ops.md "AutoDL's ops"): `op_a` = DilConv(C_in, C_in, k,
    stride, padding, dilation), then `op_b` = DilConv(C_in, C_out, k, 1, padding, dilation); AutoDL calls
    each half SepConv, the structure of DARTS' DilConv. The names op_a / op_b match AutoDL's state dicts."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int = 1,
                 affine: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.op_a = DilConv(C_in, C_in, kernel_size, stride, padding, dilation, affine=affine)
        self.op_b = DilConv(C_in, C_out, kernel_size, 1, padding, dilation, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op_b(self.op_a(x))


def dual_sep_conv(C: int, stride: int, affine: bool, kernel: int = 3) -> nn.Module:
    """AutoDL's `dua_sepc_kxk`: DualSepConv(C, C, k, stride, k // 2, dilation 1)."""
    return DualSepConv(C, C, kernel, stride, kernel // 2, 1, affine=affine)


class MBConv(nn.Module):
    """The inverted bottleneck of MobileNetV2 (Sandler et al., 2018, Table 1) with MnasNet's optional
    squeeze-excitation (Tan et al., 2019, section 4.1); docs/ops.md, "MBConv".

    `expand`: conv 1x1 C_in -> C_in * e -> BN -> act (left out when e == 1); `depthwise`: conv k x k
    (groups = hidden, stride, padding k // 2) -> BN -> act; `se` (se > 0): global average pool -> conv 1x1
    hidden -> max(1, int(C_in * se)) with bias -> ReLU -> conv 1x1 back with bias -> sigmoid, multiplied in;
    `project`: conv 1x1 hidden -> C_out -> BN (no activation). The input is added when stride == 1 and
    C_in == C_out. act is ReLU6 (MobileNetV2) or ReLU. Convolutions other than SE's have no bias."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int = 3, stride: int = 1, expand: int = 6,
                 se: float = 0.0, act: str = "relu6", affine: bool = True) -> None:  # fmt: skip
        super().__init__()
        if act not in ("relu6", "relu"):
            raise ValueError(f"MBConv activation must be 'relu6' or 'relu', got {act!r}")
        if expand < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MBConv needs an odd kernel and expansion >= 1, got k={kernel_size}, e={expand}")
        hidden = C_in * expand

        def activation() -> nn.Module:
            return nn.ReLU6(inplace=False) if act == "relu6" else nn.ReLU(inplace=False)

        self.expand = (
            nn.Sequential(nn.Conv2d(C_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden, affine=affine), activation())
            if expand != 1 else None
        )  # fmt: skip
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size, stride=stride, padding=kernel_size // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden, affine=affine),
            activation(),
        )
        if se > 0:
            squeezed = max(1, int(C_in * se))
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(hidden, squeezed, 1, bias=True),
                nn.ReLU(inplace=False),
                nn.Conv2d(squeezed, hidden, 1, bias=True),
                nn.Sigmoid(),
            )
        else:
            self.se = None
        self.project = nn.Sequential(nn.Conv2d(hidden, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))
        self.residual = stride == 1 and C_in == C_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.depthwise(h)
        if self.se is not None:
            h = h * self.se(h)
        h = self.project(h)
        return x + h if self.residual else h


def mbconv(C: int, stride: int, affine: bool, kernel: int = 3, expand: int = 6, se: float = 0.0,
           act: str = "relu6") -> nn.Module:  # fmt: skip
    """`mbconv(k, e, se, act)`: MBConv(C, C, k, stride, e, se, act) (residual at stride 1)."""
    return MBConv(C, C, kernel, stride, expand, se, act, affine=affine)


# --------------------------------------------------------------------------------------------------
# Macro-network parts (docs/ops.md, "Macro networks" and "NAS-Bench-201")
# --------------------------------------------------------------------------------------------------


class AuxiliaryHeadCIFAR(nn.Module):
    """CIFAR auxiliary head on an 8x8 input (docs/ops.md, "Macro networks").

    ReLU -> AvgPool 5x5 s3 (no pad) -> conv 1x1 C->128 -> BN -> ReLU -> conv 2x2 128->768 -> BN -> ReLU
    -> Linear(768, classes). The reference uses in-place ReLUs; these are out-of-place (same values).
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),  # 2x2 -> 1x1
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class AuxiliaryHeadImageNet(nn.Module):
    """ImageNet auxiliary head: as CIFAR but AvgPool 5x5 s2 and no BN after the 2x2 conv (docs/ops.md).

    It sits after the second reduction, on a 7x7 input (224 px): the pool gives 2x2, the 2x2 conv 1x1.

    The missing BN is deliberate: the reference commented it out to match the paper's experiments,
    so the Sequential indices are 0..6 as there.
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),  # 7x7 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class ResidualBlock(nn.Module):
    """NAS-Bench-201 residual reduction block (docs/ops.md, "NAS-Bench-201").

    conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1) -> conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1), plus the
    shortcut `downsample` = AvgPool 2x2 s2 -> conv 1x1 C_in->C_out (no bias, no BN); the two are added.
    Names follow NAS-Bench-201's ResNetBasicblock.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1, affine=affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine=affine)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(C_in, C_out, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples with probability p and rescale the rest by 1 / (1 - p) (docs/ops.md, "A DARTS cell").

    Identity in eval mode or at p == 0; all zeros at p == 1. Unlike DARTS' utils.drop_path this does not
    modify `x` in place. The mask lives on x's device and dtype.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop-path probability must lie in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x.mul(0.0)
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x.div(keep).mul(mask)


# --------------------------------------------------------------------------------------------------
# Counting (docs/ops.md, "Counting rules")
# --------------------------------------------------------------------------------------------------


def count_params(module: nn.Module) -> int:
    """All parameters of `module` (shared parameters once)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on one image, per docs/ops.md's counting rules.

    Runs `module` in eval mode on zeros of shape (1, *input_shape) with forward hooks on nn.Conv2d and
    nn.Linear only: conv = Cout * Hout * Wout * (Cin / groups) * kh * kw, linear = in * out (times the
    number of rows when a Linear sees more than one). Bias, BN, activations, pooling and sums are not
    counted; a layer called twice counts twice. The modules' training flags are restored afterwards.
    A user op built with a MAC rule (nasir.ops.op(..., macs=...), docs/ops.md "Your own ops") counts
    by its rule, macs(C, stride, H, W, **params) on its input, instead of by the layers inside it.
    """
    total = 0
    inside_rule = 0  # > 0 while a module with its own MAC rule runs: its layers are not counted again

    def conv_hook(m: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if inside_rule:
            return
        kh, kw = m.kernel_size
        total += output.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if inside_rule:
            return
        total += (output.numel() // m.out_features) * m.in_features * m.out_features

    def rule_pre(m: nn.Module, _inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal inside_rule
        inside_rule += 1

    def rule_post(m: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        nonlocal total, inside_rule
        inside_rule -= 1
        if inside_rule:
            return
        rule, C, stride, params = m._nasir_macs
        x = inputs[0]
        total += int(rule(C, stride, int(x.shape[-2]), int(x.shape[-1]), **params)) * int(x.shape[0])

    first = next(module.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    modes = {m: m.training for m in module.modules()}
    handles = []
    for m in module.modules():
        if getattr(m, "_nasir_macs", None) is not None:
            handles.append(m.register_forward_pre_hook(rule_pre))
            handles.append(m.register_forward_hook(rule_post))
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return int(total)


# ---- the built-in ops' builders, by the names nasir/ops.py gives them (`OpDef.builder`) ---------------
# The registry (front end) names the builders; this layer owns the modules and registers them here, on
# import: every path that builds a module (targets/network.py, the supernet) imports this module.
BUILDERS = {
    "zero": zero, "skip_connect": skip_connect, "pool": pool, "sep_conv": sep_conv, "dil_conv": dil_conv,
    "conv_7x1_1x7": conv_7x1_1x7, "relu_conv_bn": relu_conv_bn, "conv_3x1_1x3": conv_3x1_1x3,
    "dual_sep_conv": dual_sep_conv, "mbconv": mbconv,
}  # fmt: skip
_ops.register_builders(BUILDERS)
