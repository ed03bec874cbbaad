"""A NAS-Bench-201 checkpoint saved from AutoDL's TinyNetwork loads into nasir's network with --weights.

The reference below is a small re-implementation, written for this test, of the network NAS-Bench-201
trained (Dong & Yang, ICLR 2020, Section 2.1; AutoDL-Projects lib/models/cell_infers/tiny_network.py and
cells.py, lib/models/cell_operations.py): the module names are AutoDL's (`stem`, `cells.i.layers.k`,
`conv_a`/`conv_b`/`downsample`, `lastact`, `classifier`), each InferCell keeps one layer per edge of
the genotype in the order written. Random weights (and BN statistics) saved from it must give nasir's
network, loaded with --weights, the same logits.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasir.diagnostics import DiagnosticError
from nasir.genotype import genotype_to_spec_text, parse_genotype
from nasir.lower import build


# ---- the reference: AutoDL's TinyNetwork ---------------------------------------------------------------
class RefReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, k, stride, pad):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return self.op(x)


class RefZero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


def ref_op(name: str, c: int) -> nn.Module:
    # stride 1 and C_in == C_out inside a NAS-Bench-201 cell: skip is identity, pooling has no 1x1 conv
    if name == "nor_conv_3x3":
        return RefReLUConvBN(c, c, 3, 1, 1)
    if name == "nor_conv_1x1":
        return RefReLUConvBN(c, c, 1, 1, 0)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity()
    assert name == "none"
    return RefZero()


class RefInferCell(nn.Module):
    def __init__(self, nodes, c):
        super().__init__()
        self.layers = nn.ModuleList()
        self.node_in = []  # per node: (layer index, input node)
        for node in nodes:
            self.node_in.append([])
            for op, src in node:
                self.node_in[-1].append((len(self.layers), src))
                self.layers.append(ref_op(op, c))

    def forward(self, x):
        states = [x]
        for node in self.node_in:
            states.append(sum(self.layers[k](states[s]) for k, s in node))
        return states[-1]


class RefResNetBasicblock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv_a = RefReLUConvBN(c_in, c_out, 3, 2, 1)
        self.conv_b = RefReLUConvBN(c_out, c_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class RefTinyNetwork(nn.Module):
    def __init__(self, c, n, nodes, classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.cells = nn.ModuleList()
        prev = c
        for stage, width in enumerate((c, 2 * c, 4 * c)):
            if stage:
                self.cells.append(RefResNetBasicblock(prev, width))
            self.cells.extend(RefInferCell(nodes, width) for _ in range(n))
            prev = width
        self.lastact = nn.Sequential(nn.BatchNorm2d(prev), nn.ReLU())
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, classes)

    def forward(self, x):
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        out = self.global_pooling(self.lastact(h)).flatten(1)
        return out, self.classifier(out)


def randomized(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return net.eval()


def nodes_of(arch: str) -> list[list[tuple[str, int]]]:
    """An NB201 string's nodes as written (AutoDL's Structure.str2structure, short form kept short)."""
    return [[(e.split("~")[0], int(e.split("~")[1])) for e in node.strip("|").split("|")] for node in arch.split("+")]


def nasir_net(arch: str, c: int, n: int, tmp_path, weights=None, classes: int = 10):
    spec = tmp_path / "arch.cell"
    spec.write_text(genotype_to_spec_text(parse_genotype(arch)))
    return build(spec, weights=weights, overrides=[f"C={c}", f"N={n}", f"classes={classes}"]).eval()


def saved(net: nn.Module, path, reverse: bool = True):
    sd = net.state_dict()
    if reverse:  # the mapping goes by structure, never by the order of the keys
        sd = dict(reversed(list(sd.items())))
    torch.save(sd, path)
    return path


FULL = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


@pytest.mark.parametrize("arch, n", [
    (FULL, 2),
    ("|nor_conv_1x1~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_3x3~1|nor_conv_1x1~2|", 1),
    # AutoDL's short form: an InferCell built from it has only the written edges (ResNet_CODE of genotypes.py)
    ("|nor_conv_3x3~0|+|nor_conv_3x3~1|+|skip_connect~0|skip_connect~2|", 1),
])  # fmt: skip
def test_tinynetwork_checkpoint_gives_the_same_logits(arch, n, tmp_path):
    ref = randomized(RefTinyNetwork(4, n, nodes_of(arch), 10), seed=1)
    assert any(".layers." in k for k in ref.state_dict())  # AutoDL's layout indeed
    ckpt = saved(ref, tmp_path / "autodl.pth")
    ours = nasir_net(arch, 4, n, tmp_path, weights=ckpt)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(x)[1]
        got = ours(x)
    assert got.shape == expected.shape == (3, 10)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
    # and a seeded nasir initialisation is not the reference: the weights came from the checkpoint
    with torch.no_grad():
        assert not torch.allclose(nasir_net(arch, 4, n, tmp_path)(x), expected, atol=1e-3)


def test_autodl_training_record_is_unwrapped_from_net_state_dict(tmp_path):
    # AutoDL's NAS-Bench-201 training (procedures/funcs_nasbench.py, evaluate_for_seed) saves a record with
    # the metrics beside the weights under "net_state_dict"; the fields here are that record's kinds of value.
    ref = randomized(RefTinyNetwork(4, 1, nodes_of(FULL), 10), seed=5)
    record = {
        "flop": 1.5, "param": 0.01, "channel": 4, "num_cells": 1, "config": {"name": "cifar", "epochs": 200},
        "total_epoch": 200, "train_losses": {0: 2.3, 1: 2.1}, "valid_acc1es": {"ori-test@0": 10.0},
        "net_state_dict": ref.state_dict(), "net_string": "TinyNetwork(...)", "finish-train": True,
    }  # fmt: skip
    torch.save(record, tmp_path / "record.pth")
    ours = nasir_net(FULL, 4, 1, tmp_path, weights=tmp_path / "record.pth")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x)[1], atol=1e-6, rtol=0)


def test_tinynetwork_checkpoint_of_another_architecture_is_refused_at_the_edge(tmp_path):
    other = FULL.replace("|nor_conv_3x3~0|+", "|nor_conv_1x1~0|+")  # edge 1<-0 is a 1x1 conv in the checkpoint
    ckpt = saved(randomized(RefTinyNetwork(4, 1, nodes_of(other), 10), seed=1), tmp_path / "other.pth")
    with pytest.raises(DiagnosticError) as e:
        nasir_net(FULL, 4, 1, tmp_path, weights=ckpt)
    (d,) = e.value.diagnostics
    assert d.message == (
        f"checkpoint '{ckpt}' (AutoDL's TinyNetwork) does not fit the network: cell 0, edge 1<-0 (layer 0 of the "
        "checkpoint): the checkpoint has 1x1 convolution 4->4, the network's ReLUConvBN has 3x3 convolution 4->4"
    )
    # a skip where the network has a convolution: the network's weights have no source
    skip = FULL.replace("|skip_connect~0|none~1|nor_conv_3x3~2|", "|skip_connect~0|none~1|skip_connect~2|")
    ckpt = saved(randomized(RefTinyNetwork(4, 1, nodes_of(skip), 10), seed=1), tmp_path / "skip.pth")
    with pytest.raises(DiagnosticError, match=r"cell 0, edge 3<-2: the network's ReLUConvBN has weights, the checkpoint none"):
        nasir_net(FULL, 4, 1, tmp_path, weights=ckpt)


def test_tinynetwork_checkpoint_with_another_n_or_c_is_refused(tmp_path):
    ckpt = saved(randomized(RefTinyNetwork(4, 2, nodes_of(FULL), 10), seed=1), tmp_path / "n2.pth")
    with pytest.raises(DiagnosticError) as e:
        nasir_net(FULL, 4, 1, tmp_path, weights=ckpt)
    assert "its reduction blocks are cells [2, 5] (N = 2), the network's are [1, 3] (N = 1)" in e.value.diagnostics[0].message
    assert e.value.diagnostics[0].hint == "build the network with the checkpoint's N: --set N=2"
    with pytest.raises(DiagnosticError, match="3x3 convolution 4->4, the network's ReLUConvBN has 3x3 convolution 6->6"):
        nasir_net(FULL, 6, 2, tmp_path, weights=ckpt)


def test_compile_cli_takes_an_autodl_checkpoint(tmp_path):
    from nasir.cli import main

    ref = randomized(RefTinyNetwork(4, 1, nodes_of(FULL), 10), seed=3)
    ckpt = saved(ref, tmp_path / "autodl.pth")
    spec = tmp_path / "arch.cell"
    spec.write_text(genotype_to_spec_text(parse_genotype(FULL)))
    out = tmp_path / "model.pt"
    assert main(["compile", str(spec), "-t", "torchscript", "--set", "C=4", "--set", "N=1", "--weights", str(ckpt), "-o", str(out)]) == 0
    model = torch.jit.load(str(out)).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = (model(x) - ref(x)[1]).abs().max().item()
    assert diff < 1e-5, diff  # TorchScript may fold BN into the convolutions: float rounding only
