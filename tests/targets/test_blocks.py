"""Tests of nasir.targets.blocks against numbers computed by hand from docs/ops.md."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from nasir.ops import REGISTRY
from nasir.targets import blocks

# ---------------------------------------------------------------------------------------------
# Parameter counts (conv weights have no bias; an affine BN(C) has 2C parameters)
# ---------------------------------------------------------------------------------------------


def test_sep_conv_params_equal_two_halves_of_depthwise_pointwise_and_affine_bn():
    assert blocks.count_params(blocks.SepConv(16, 16, 3, 1, 1)) == 2 * (16 * 9 + 16 * 16 + 2 * 16)


def test_sep_conv_without_affine_has_only_conv_weights():
    assert blocks.count_params(blocks.SepConv(16, 16, 3, 1, 1, affine=False)) == 2 * (16 * 9 + 16 * 16)


def test_sep_conv_widening_applies_only_to_second_pointwise_conv():
    first = 16 * 25 + 16 * 16 + 2 * 16
    second = 16 * 25 + 16 * 32 + 2 * 32
    assert blocks.count_params(blocks.SepConv(16, 32, 5, 2, 2)) == first + second


def test_dil_conv_params_are_depthwise_plus_pointwise_plus_bn():
    assert blocks.count_params(blocks.DilConv(16, 16, 3, 1, 2, 2)) == 16 * 9 + 16 * 16 + 2 * 16
    assert blocks.count_params(blocks.DilConv(16, 32, 5, 2, 4, 2)) == 16 * 25 + 16 * 32 + 2 * 32
    assert blocks.count_params(blocks.DilConv(16, 16, 3, 1, 2, 2, affine=False)) == 16 * 9 + 16 * 16


def test_factorized_reduce_params_are_two_half_width_1x1_convs_plus_bn():
    assert blocks.count_params(blocks.FactorizedReduce(32, 16)) == 2 * (32 * 8) + 2 * 16
    assert blocks.count_params(blocks.FactorizedReduce(32, 16, affine=False)) == 2 * (32 * 8)


def test_relu_conv_bn_params_are_full_conv_plus_bn():
    assert blocks.count_params(blocks.ReLUConvBN(16, 32, 3, 1, 1)) == 16 * 32 * 9 + 2 * 32


def test_conv_7x1_1x7_params_are_two_factorized_convs_plus_bn():
    assert blocks.count_params(blocks.conv_7x1_1x7(16, 1, True)) == 2 * (16 * 16 * 7) + 2 * 16


def test_auxiliary_head_cifar_params_match_hand_count():
    conv1, bn1 = 576 * 128, 2 * 128
    conv2, bn2 = 128 * 768 * 2 * 2, 2 * 768
    linear = 768 * 10 + 10
    assert conv1 + bn1 + conv2 + bn2 + linear == 476426
    assert blocks.count_params(blocks.AuxiliaryHeadCIFAR(576, 10)) == 476426


def test_auxiliary_head_imagenet_has_no_bn_after_2x2_conv():
    conv1, bn1 = 768 * 128, 2 * 128
    conv2 = 128 * 768 * 2 * 2
    linear = 768 * 1000 + 1000
    head = blocks.AuxiliaryHeadImageNet(768, 1000)
    assert blocks.count_params(head) == conv1 + bn1 + conv2 + linear
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == 1


def test_residual_block_params_are_two_relu_conv_bn_plus_1x1_shortcut():
    conv_a = 16 * 32 * 9 + 2 * 32
    conv_b = 32 * 32 * 9 + 2 * 32
    shortcut = 16 * 32
    assert blocks.count_params(blocks.ResidualBlock(16, 32)) == conv_a + conv_b + shortcut


def test_parameter_free_ops_have_no_parameters_at_stride_1():
    for name in ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"):
        assert blocks.count_params(REGISTRY[name].build(16, 1)) == 0, name


# ---------------------------------------------------------------------------------------------
# Reference naming (state-dict keys as in quark0/darts and NAS-Bench-201)
# ---------------------------------------------------------------------------------------------


def test_factorized_reduce_state_dict_uses_reference_names():
    keys = set(blocks.FactorizedReduce(8, 8).state_dict())
    assert {"conv_1.weight", "conv_2.weight", "bn.weight", "bn.bias", "bn.running_mean"} <= keys


def test_sep_conv_state_dict_uses_reference_sequential_indices():
    keys = [k for k in blocks.SepConv(8, 8, 3, 1, 1).state_dict() if k.endswith("weight")]
    assert keys == ["op.1.weight", "op.2.weight", "op.3.weight", "op.5.weight", "op.6.weight", "op.7.weight"]


def test_auxiliary_heads_use_reference_sequential_indices():
    cifar = [k for k in blocks.AuxiliaryHeadCIFAR(8, 10).state_dict() if k.endswith("weight")]
    assert cifar == [
        "features.2.weight",
        "features.3.weight",
        "features.5.weight",
        "features.6.weight",
        "classifier.weight",
    ]
    imagenet = [k for k in blocks.AuxiliaryHeadImageNet(8, 10).state_dict() if k.endswith("weight")]
    assert imagenet == ["features.2.weight", "features.3.weight", "features.5.weight", "classifier.weight"]


def test_residual_block_state_dict_uses_nas_bench_201_names():
    keys = [k for k in blocks.ResidualBlock(8, 16).state_dict() if k.endswith("weight")]
    assert keys == [
        "conv_a.op.1.weight",
        "conv_a.op.2.weight",
        "conv_b.op.1.weight",
        "conv_b.op.2.weight",
        "downsample.1.weight",
    ]


# ---------------------------------------------------------------------------------------------
# Builders: shapes and structure
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_op_keeps_channels_and_divides_spatial_size_by_stride(name, stride, affine):
    op = REGISTRY[name].build(8, stride, affine).eval()
    out = op(torch.randn(2, 8, 32, 32))
    assert out.shape == (2, 8, 32 // stride, 32 // stride)


def test_affine_false_builders_have_no_bn_parameters():
    for name in ("sep_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7", "nor_conv_3x3"):
        op = REGISTRY[name].build(8, 2, affine=False)
        for m in op.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert not m.affine and m.weight is None, name


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_stride_2():
    ident = blocks.skip_connect(8, 1, True)
    assert isinstance(ident, blocks.Identity) and isinstance(ident, nn.Identity)
    x = torch.randn(1, 8, 4, 4)
    assert ident(x) is x
    assert isinstance(blocks.skip_connect(8, 2, True), blocks.FactorizedReduce)


def test_dil_conv_builder_uses_dilation_2_and_padding_2_or_4():
    for kernel, padding in ((3, 2), (5, 4)):
        depthwise = blocks.dil_conv(8, 1, True, kernel=kernel, dilation=2).op[1]
        assert depthwise.kernel_size == (kernel, kernel)
        assert depthwise.dilation == (2, 2) and depthwise.padding == (padding, padding)
        assert depthwise.groups == 8


def test_sep_conv_builder_pads_by_half_kernel_and_strides_only_first_half():
    op = blocks.sep_conv(8, 2, True, kernel=7).op
    assert op[1].padding == (3, 3) and op[1].stride == (2, 2)
    assert op[5].padding == (3, 3) and op[5].stride == (1, 1)


def test_conv_7x1_1x7_strides_each_axis_once():
    op = blocks.conv_7x1_1x7(8, 2, True)
    assert op[1].kernel_size == (1, 7) and op[1].stride == (1, 2) and op[1].padding == (0, 3)
    assert op[2].kernel_size == (7, 1) and op[2].stride == (2, 1) and op[2].padding == (3, 0)


def test_avg_pool_excludes_padding_from_the_average():
    out = blocks.pool(1, 1, True, kind="avg", kernel=3)(torch.ones(1, 1, 4, 4))
    assert torch.equal(out, torch.ones(1, 1, 4, 4))  # count_include_pad=True would give 4/9 in a corner


def test_max_pool_takes_window_maximum_with_padding_1():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = blocks.pool(1, 2, True, kind="max", kernel=3)(x)
    assert out.tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]


def test_pool_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        blocks.pool(8, 1, True, kind="min")


def test_zero_gives_zeros_of_input_shape_at_stride_1_and_subsampled_at_stride_2():
    x = torch.randn(2, 4, 7, 7)
    out1, out2 = blocks.Zero(1)(x), blocks.Zero(2)(x)
    assert out1.shape == (2, 4, 7, 7) and not out1.any()
    assert out2.shape == (2, 4, 4, 4) and not out2.any()  # ceil(7 / 2), like a 3x3 padded stride-2 op


def test_factorized_reduce_second_conv_reads_input_shifted_by_one_pixel():
    fr = blocks.FactorizedReduce(1, 2).eval()
    with torch.no_grad():
        fr.conv_1.weight.fill_(1.0)
        fr.conv_2.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)  # non-negative, so the ReLU changes nothing
    out = fr(x) * torch.sqrt(torch.tensor(1.0 + fr.bn.eps))  # undo the fresh BN's 1 / sqrt(1 + eps)
    expected = torch.tensor([[[[0.0, 2.0], [8.0, 10.0]], [[5.0, 7.0], [13.0, 15.0]]]])
    torch.testing.assert_close(out, expected)


def test_factorized_reduce_rejects_odd_output_channels():
    with pytest.raises(ValueError, match="even"):
        blocks.FactorizedReduce(8, 7)


def test_relu_conv_bn_starts_with_relu():
    m = blocks.ReLUConvBN(4, 4, 1, 1, 0).eval()
    x = -torch.rand(1, 4, 3, 3) - 0.1  # all negative -> ReLU gives zeros -> output is BN of zeros
    torch.testing.assert_close(m(x), torch.zeros(1, 4, 3, 3))


def test_residual_block_halves_spatial_size_and_changes_channels():
    out = blocks.ResidualBlock(16, 32).eval()(torch.randn(2, 16, 32, 32))
    assert out.shape == (2, 32, 16, 16)


def test_residual_block_output_is_shortcut_plus_main_path():
    m = blocks.ResidualBlock(4, 8).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        m.conv_b.op[1].weight.zero_()  # kill the main path: the fresh BN maps 0 to 0
        shortcut = nn.functional.conv2d(nn.functional.avg_pool2d(x, 2), m.downsample[1].weight)
        torch.testing.assert_close(m(x), shortcut)


def test_auxiliary_heads_map_their_nominal_inputs_to_logits():
    assert blocks.AuxiliaryHeadCIFAR(16, 10).eval()(torch.randn(2, 16, 8, 8)).shape == (2, 10)
    assert blocks.AuxiliaryHeadImageNet(16, 7).eval()(torch.randn(2, 16, 7, 7)).shape == (2, 7)


# ---------------------------------------------------------------------------------------------
# drop_path
# ---------------------------------------------------------------------------------------------


def test_drop_path_keeps_the_expectation_and_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(20000, 2, 2, 2)
    out = blocks.drop_path(x, 0.2, training=True)
    per_sample = out.view(20000, -1)
    # each sample is either all zero or all 1 / (1 - p)
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1.25)).all(1))
    dropped = (per_sample == 0).all(1).float().mean().item()
    assert abs(dropped - 0.2) < 0.02
    assert abs(out.mean().item() - 1.0) < 0.02  # std of the mean is 0.5 / sqrt(20000) = 0.0035
    assert torch.equal(x, torch.ones(20000, 2, 2, 2))  # input untouched


def test_drop_path_is_identity_in_eval_and_at_p_zero():
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(blocks.drop_path(x, 0.5, training=False), x)
    assert torch.equal(blocks.drop_path(x, 0.0, training=True), x)


def test_drop_path_rejects_probability_outside_unit_interval():
    with pytest.raises(ValueError):
        blocks.drop_path(torch.ones(1), 1.5, training=True)


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


def test_count_macs_of_a_single_conv_is_cout_hout_wout_cin_kh_kw():
    assert blocks.count_macs(nn.Conv2d(3, 16, 3, padding=1), (3, 32, 32)) == 16 * 32 * 32 * 3 * 3 * 3


def test_count_macs_of_depthwise_stride_2_conv_divides_cin_by_groups():
    conv = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
    assert blocks.count_macs(conv, (16, 32, 32)) == 16 * 16 * 16 * 1 * 3 * 3


def test_count_macs_of_a_linear_is_in_times_out():
    assert blocks.count_macs(nn.Linear(64, 10), (64,)) == 64 * 10


def test_count_macs_ignores_bn_pooling_and_activations():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    assert blocks.count_macs(net, (3, 16, 16)) == 8 * 16 * 16 * 3 * 9 + 8 * 5
    assert blocks.count_macs(nn.MaxPool2d(3, 1, 1), (4, 8, 8)) == 0


def test_count_macs_of_sep_conv_sums_both_halves():
    depthwise, pointwise = 16 * 32 * 32 * 1 * 9, 16 * 32 * 32 * 16 * 1
    assert blocks.count_macs(blocks.SepConv(16, 16, 3, 1, 1), (16, 32, 32)) == 2 * (depthwise + pointwise)


def test_count_macs_of_auxiliary_head_cifar():
    expected = 128 * 2 * 2 * 576 + 768 * 1 * 1 * 128 * 2 * 2 + 768 * 10
    assert blocks.count_macs(blocks.AuxiliaryHeadCIFAR(576, 10), (576, 8, 8)) == expected


def test_count_macs_restores_training_mode_and_removes_hooks():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    net.train()
    net[1].eval()
    blocks.count_macs(net, (1, 4, 4))
    assert net.training and net[0].training and not net[1].training
    assert not net[0]._forward_hooks


# ---------------------------------------------------------------------------------------------
# Tracing and ONNX export
# ---------------------------------------------------------------------------------------------


def _traceable_blocks() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    return [
        ("zero_s2", blocks.Zero(2), (1, 8, 16, 16)),
        ("factorized_reduce", blocks.FactorizedReduce(8, 8), (1, 8, 16, 16)),
        ("sep_conv_5x5_s2", blocks.SepConv(8, 8, 5, 2, 2), (1, 8, 16, 16)),
        ("dil_conv_3x3", blocks.DilConv(8, 8, 3, 1, 2, 2), (1, 8, 16, 16)),
        ("conv_7x1_1x7_s2", blocks.conv_7x1_1x7(8, 2, True), (1, 8, 16, 16)),
        ("avg_pool_s2", blocks.pool(8, 2, True, kind="avg"), (1, 8, 16, 16)),
        ("residual", blocks.ResidualBlock(8, 16), (1, 8, 16, 16)),
        ("aux_cifar", blocks.AuxiliaryHeadCIFAR(8, 10), (1, 8, 8, 8)),
        ("aux_imagenet", blocks.AuxiliaryHeadImageNet(8, 10), (1, 8, 7, 7)),
    ]


@pytest.mark.parametrize("name,module,shape", _traceable_blocks(), ids=lambda v: v if isinstance(v, str) else "")
def test_block_traces_with_jit_and_matches_eager(name, module, shape):
    module.eval()
    x = torch.randn(*shape)
    traced = torch.jit.trace(module, (x,))
    y = torch.randn(*shape)
    torch.testing.assert_close(traced(y), module(y))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name,module,shape", _traceable_blocks(), ids=lambda v: v if isinstance(v, str) else "")
def test_block_exports_to_onnx_and_onnxruntime_matches_torch(name, module, shape):
    module.eval()
    x = torch.randn(*shape)
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["x"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-5)
def test_factorized_reduce_with_few_channels_in_channels_last_matches_nchw():
    """torch 2.14's oneDNN corrupts the heap in the weight gradient of a 1x1 stride-2 NHWC conv with
    C_in < 8 on CPU; FactorizedReduce takes an NCHW path there. Run in a child: a corrupted heap aborts."""
    import subprocess
    import sys

    code = """
import torch
from nasir.targets.blocks import FactorizedReduce
torch.manual_seed(0)
for cin in (2, 4, 6):
    fr = FactorizedReduce(cin, cin, affine=False).to(memory_format=torch.channels_last)
    ref = FactorizedReduce(cin, cin, affine=False)
    ref.load_state_dict(fr.state_dict())
    x = torch.randn(8, cin, 8, 8)
    xc, xr = x.contiguous(memory_format=torch.channels_last).requires_grad_(), x.clone().requires_grad_()
    for _ in range(3):
        y = fr(xc)
        r = ref.bn(torch.cat([torch.nn.functional.conv2d(ref.relu(xr), ref.conv_1.weight, stride=2),
                              torch.nn.functional.conv2d(ref.relu(xr)[:, :, 1:, 1:], ref.conv_2.weight, stride=2)], 1))
        gy = torch.randn_like(r)
        g = torch.autograd.grad((y * gy).sum(), [xc, fr.conv_1.weight, fr.conv_2.weight])
        h = torch.autograd.grad((r * gy).sum(), [xr, ref.conv_1.weight, ref.conv_2.weight])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, r, atol=1e-6) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g, h))
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
