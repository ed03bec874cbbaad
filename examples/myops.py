"""A researcher's own ops for nasir (docs/ops.md, "Your own ops"); examples/myops.cell uses them.

nasir imports this file when a spec says `ops "myops.py"` or a command gets `--ops myops.py`:
importing runs it, so name only files you trust, like any plugin. Each op is a builder
`(C, stride, affine, **params) -> nn.Module` mapping C channels to C channels (H and W divided by
`stride`), marked with `@op`.
"""

from torch import nn

from nasir.ops import op


@op("gconv", params={"k": 3, "groups": 2}, doc="ReLU, grouped conv k x k, BN")
def grouped_conv(C, stride, affine, k=3, groups=2):
    """ReLU -> grouped conv k x k (C -> C, `groups` groups, stride) -> BN. Parameters: C*C*k*k/groups + BN."""
    if C % groups:
        raise ValueError(f"gconv: {C} channels do not split into {groups} groups")
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


def _blur_macs(C, stride, H, W):
    """The MAC rule of `blur`: one multiply-add per tap and output value (C * H/s * W/s * 9)."""
    return C * ((H - 1) // stride + 1) * ((W - 1) // stride + 1) * 9


class Blur(nn.Module):
    """A fixed 3 x 3 binomial blur per channel (no weights), subsampled by the stride."""

    def __init__(self, C, stride):
        super().__init__()
        import torch

        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(C, 1, 3, 3).contiguous())
        self.stride = stride
        self.C = C

    def forward(self, x):
        return nn.functional.conv2d(x, self.kernel, stride=self.stride, padding=1, groups=self.C)


@op("blur", parameter_free=True, macs=_blur_macs, doc="fixed 3x3 binomial blur (no weights)")
def blur(C, stride, affine):
    return Blur(C, stride)
