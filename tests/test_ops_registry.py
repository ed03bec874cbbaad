"""The op registry: parametric ops in the DSL, scoped user op files, MBConv and AutoDL's ops.

Parameter and MAC counts are written out by formula in the tests (docs/ops.md's counting rules: a conv
counts Cout * Hout * Wout * Cin/groups * kh * kw MACs, BN and activations none) and compared with what
torch's modules hold (numel of their parameters) and what a forward pass with hooks counts.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from helpers import errors_of, spec_of
from torch import nn

from nasir import ops
from nasir.printer import print_spec
from nasir.targets.blocks import count_macs, count_params


@pytest.fixture
def scope():
    with ops.scope() as reg:
        yield reg


def _space(opset: str) -> str:
    return f"""
    opset mb = {opset}
    cell c {{
      inputs x
      nodes n0, n1
      edges * -> n* : choice(mb)
      output n1
    }}
    """


# ---- parametric ops in the DSL ---------------------------------------------------------------------


def test_parametric_opset_resolves_to_canonical_names_and_prints_back_the_same_way():
    text = _space("{mbconv(k = 3, e = 3), mbconv(k = 5, e = 6), sep_conv(k = 7), skip_connect}")
    spec = spec_of(text)
    assert spec.opset("mb").ops == ("mbconv(k = 3, e = 3)", "mbconv(k = 5, e = 6)", "sep_conv(k = 7)", "skip_connect")
    printed = print_spec(spec)
    assert "opset mb = {mbconv(k = 3, e = 3), mbconv(k = 5, e = 6), sep_conv(k = 7), skip_connect}" in printed
    assert spec_of(printed) == spec


def test_a_fixed_parametric_edge_gets_the_canonical_parameter_order_and_round_trips():
    spec = spec_of("""
    cell c {
      inputs x
      nodes n0
      edges x -> n0 : mbconv(e = 3, k = 5, se = 0.25, act = relu)
      output n0
    }
    """)
    (e,) = spec.cell("c").edges
    assert e.op == "mbconv(k = 5, e = 3, se = 0.25, act = relu)"
    printed = print_spec(spec)
    assert "edges x -> n0 : mbconv(k = 5, e = 3, se = 0.25, act = relu)" in printed  # not the equation form
    assert spec_of(printed) == spec
    d = ops.REGISTRY[e.op]
    assert dict(d.params) == {"kernel": 5, "expand": 3, "se": 0.25, "act": "relu"} and d.family == "mbconv"


def test_parametric_op_builds_what_the_explicit_builtin_builds():
    # sep_conv(k = 5) is the same module as sep_conv_5x5: same state-dict shapes and outputs.
    torch.manual_seed(0)
    a = ops.REGISTRY["sep_conv(k = 5)"].build(4, 2)
    torch.manual_seed(0)
    b = ops.REGISTRY["sep_conv_5x5"].build(4, 2)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize(
    ("item", "col", "message"),
    [
        ("mbconv(q = 3)", 34, "op 'mbconv' has no parameter 'q' (parameters: k, e, se, act)"),
        ("mbconv(k = 2.5)", 34, "parameter 'k' must be an integer, got 2.5"),
        ("mbconv(k = 4)", 34, "parameter 'k' must be one of 1, 3, 5, 7, 9, 11, got 4"),
        ("mbconv(act = tanh)", 34, "parameter 'act' must be one of relu6, relu, got tanh"),
        ("mbconv(se = true)", 34, "parameter 'se' must be a number, got true"),
        ("mbconv(k = 3, k = 5)", 41, "parameter 'k' given twice"),
        ("sep_conv_3x3(k = 3)", 40, "op 'sep_conv_3x3' takes no parameters"),
        ("foo(k = 3)", 27, "unknown op 'foo'"),
    ],
)
def test_bad_parametric_ops_are_pointed_errors(item, col, message):
    # `opset mb = {skip_connect, ` is 26 characters: the item starts at column 27, its first argument
    # 7 further for mbconv( and 13 for sep_conv_3x3(; the bad argument is the one pointed at.
    errs = errors_of(f"opset mb = {{skip_connect, {item}}}\n")
    assert errs == [(1, col, message)]


def test_wrong_parametric_op_on_a_fixed_edge_is_pointed_at_its_argument():
    errs = errors_of("""
    cell c {
      inputs x
      nodes n0
      edges x -> n0 : mbconv(k = 3, e = x)
      output n0
    }
    """)
    assert errs == [(4, 33, "parameter 'e' must be an integer, got x")]


# ---- MBConv: parameters and MACs by hand ----------------------------------------------------------


def _mbconv_counts(C: int, k: int, e: int, se: float, stride: int, H: int, W: int) -> tuple[int, int]:
    """MobileNetV2 / MnasNet inverted bottleneck, C -> C, BN affine (2 parameters per channel)."""
    h = C * e
    Ho, Wo = (H + 2 * (k // 2) - k) // stride + 1, (W + 2 * (k // 2) - k) // stride + 1
    params = macs = 0
    if e != 1:
        params += C * h + 2 * h  # 1x1 expand conv (no bias) + BN
        macs += h * H * W * C
    params += h * k * k + 2 * h  # depthwise k x k + BN
    macs += h * Ho * Wo * k * k
    if se > 0:
        s = max(1, int(C * se))
        params += (h * s + s) + (s * h + h)  # two 1x1 convs with bias on the pooled 1x1 map
        macs += h * s + s * h
    params += h * C + 2 * C  # 1x1 project + BN
    macs += C * Ho * Wo * h
    return params, macs


@pytest.mark.parametrize(
    ("k", "e", "se", "stride"),
    [(3, 6, 0.0, 1), (5, 3, 0.0, 2), (3, 1, 0.0, 1), (7, 6, 0.25, 1), (5, 4, 0.5, 2), (3, 1, 0.25, 2)],
)
def test_mbconv_parameters_and_macs_match_the_hand_count(k, e, se, stride):
    C, H, W = 8, 12, 10
    name = ops.op_text("mbconv", [("k", k), ("e", e), ("se", se)])
    m = ops.REGISTRY[name].build(C, stride)
    params, macs = _mbconv_counts(C, k, e, se, stride, H, W)
    assert count_params(m) == params
    assert count_macs(m, (C, H, W)) == macs


def test_mbconv_structure_residual_activation_and_expansion():
    m = ops.REGISTRY["mbconv(k = 3, e = 1, act = relu)"].build(4, 1)
    assert m.expand is None and m.residual and m.se is None
    assert any(isinstance(x, nn.ReLU) for x in m.depthwise) and not any(isinstance(x, nn.ReLU6) for x in m.modules())
    # With the projection's BN scaled to zero the block is the identity: the residual is added at stride 1.
    nn.init.zeros_(m.project[1].weight)
    nn.init.zeros_(m.project[1].bias)
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(m.eval()(x), x)
    s2 = ops.REGISTRY["mbconv"].build(4, 2)  # the bare family name: k = 3, e = 6, ReLU6
    assert not s2.residual and s2.expand is not None and isinstance(s2.depthwise[2], nn.ReLU6)
    assert s2.eval()(x).shape == (2, 4, 3, 3)


# ---- AutoDL's ops ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("conv_3x1_1x3", lambda C: 3 * C * C + 3 * C * C + 2 * C),
        ("nor_conv_7x7", lambda C: 49 * C * C + 2 * C),
        ("dua_sepc_3x3", lambda C: 2 * (9 * C + C * C + 2 * C)),
        ("dua_sepc_5x5", lambda C: 2 * (25 * C + C * C + 2 * C)),
        ("dil_sepc_3x3", lambda C: 9 * C + C * C + 2 * C),
        ("dil_sepc_5x5", lambda C: 25 * C + C * C + 2 * C),
    ],
)
@pytest.mark.parametrize("stride", [1, 2])
def test_autodl_ops_have_the_hand_counted_parameters(name, params, stride):
    C = 16
    m = ops.REGISTRY[name].build(C, stride)
    assert count_params(m) == params(C)
    assert m(torch.randn(2, C, 8, 8)).shape == (2, C, 8 // stride, 8 // stride)


class _AutoDLSepConv(nn.Module):
    """AutoDL-Projects' SepConv as its cell_operations.py defines it, written out for this test."""

    def __init__(self, C_in, C_out, k, stride, pad, dil):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, k, stride=stride, padding=pad, dilation=dil, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out),
        )

    def forward(self, x):
        return self.op(x)


class _AutoDLDualSepConv(nn.Module):
    def __init__(self, C_in, C_out, k, stride, pad, dil):
        super().__init__()
        self.op_a = _AutoDLSepConv(C_in, C_in, k, stride, pad, dil)
        self.op_b = _AutoDLSepConv(C_in, C_out, k, 1, pad, dil)

    def forward(self, x):
        return self.op_b(self.op_a(x))


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("dua_sepc_3x3", lambda C, s: _AutoDLDualSepConv(C, C, 3, s, 1, 1)),
        ("dua_sepc_5x5", lambda C, s: _AutoDLDualSepConv(C, C, 5, s, 2, 1)),
        ("dil_sepc_3x3", lambda C, s: _AutoDLSepConv(C, C, 3, s, 2, 2)),
        ("dil_sepc_5x5", lambda C, s: _AutoDLSepConv(C, C, 5, s, 4, 2)),
    ],
)
def test_autodl_separable_ops_take_autodl_weights_and_compute_the_same(name, ref):
    torch.manual_seed(1)
    theirs = ref(6, 2)
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ours = ops.REGISTRY[name].build(6, 2)
    ours.load_state_dict(theirs.state_dict())  # same keys (op_a.op.1.weight, ...) and shapes
    x = torch.randn(2, 6, 9, 9)
    assert torch.equal(ours.eval()(x), theirs.eval()(x))


# ---- user op files and scopes -------------------------------------------------------------------------

OP_FILE = '''
from torch import nn
from nasir.ops import op


@op("twice", params={"k": 3})
def twice(C, stride, affine, k=3):
    return nn.Conv2d(C, C, k, stride=stride, padding=k // 2, bias=False)


@op("free", parameter_free=True, macs=lambda C, stride, H, W: 7 * C * H * W)
def free(C, stride, affine):
    return nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.AvgPool2d(1, stride=stride))
'''


def _write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_an_op_file_is_loaded_into_the_scope_and_gone_after_it(tmp_path):
    path = _write(tmp_path, "mine.py", OP_FILE)
    with ops.scope():
        defs = ops.load_file(path)
        assert [d.name for d in defs] == ["twice", "free"]
        assert ops.REGISTRY["free"].parameter_free and not ops.REGISTRY["twice"].parameter_free
        assert ops.REGISTRY["twice"].origin == str(path.resolve())
        m = ops.REGISTRY["twice(k = 5)"].build(4, 1)
        assert m.kernel_size == (5, 5)
        assert ops.load_file(path) == defs  # the same file again: nothing changes
    assert "twice" not in ops.REGISTRY and "free" not in ops.REGISTRY


def test_a_mac_rule_replaces_the_layer_count(scope, tmp_path):
    ops.load_file(_write(tmp_path, "mine.py", OP_FILE))
    m = ops.REGISTRY["free"].build(3, 1)
    # The rule says 7 * C * H * W; the 1x1 conv inside would count C * C * H * W = 3 * 3 * 5 * 4.
    assert count_macs(m, (3, 5, 4)) == 7 * 3 * 5 * 4
    assert count_macs(ops.REGISTRY["twice"].build(3, 1), (3, 5, 4)) == 3 * 5 * 4 * 3 * 9  # no rule: counted


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("from nasir.ops import op\n@op('sep_conv_3x3')\ndef f(C, s, a): pass\n", "op 'sep_conv_3x3' is a built-in op"),
        ("x = 1\n", "it defines no op"),
        ("x = 1\n\nraise RuntimeError('boom')\n", "RuntimeError: boom (line 3)"),
        ("def f(:\n", "SyntaxError"),
        ("from nasir.ops import op\n@op('bad name')\ndef f(C, s, a): pass\n", "is not a name"),
        ("from nasir.ops import op\n@op('g', params={'k': [1]})\ndef f(C, s, a): pass\n", "use an int, float, bool or str"),
    ],
)
def test_bad_op_files_are_refused_with_the_reason(scope, tmp_path, text, message):
    with pytest.raises(ops.OpFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ops.load_file(_write(tmp_path, "bad.py", text))


def test_two_files_cannot_define_one_name(scope, tmp_path):
    ops.load_file(_write(tmp_path, "a.py", OP_FILE))
    (tmp_path / "b").mkdir()
    with pytest.raises(ops.OpFileError, match="op 'twice' is already defined by .*a.py"):
        ops.load_file(_write(tmp_path / "b", "a.py", OP_FILE))


def test_spec_names_its_op_file_relative_to_itself_and_prints_it(scope, tmp_path):
    (tmp_path / "lib").mkdir()
    _write(tmp_path / "lib", "mine.py", OP_FILE)
    spec_path = _write(tmp_path, "s.cell", """
    ops "lib/mine.py"
    cell c {
      inputs x
      nodes n0
      edges x -> n0 : twice(k = 5)
      output n0
    }
    """)
    from nasir.api import load

    spec = load(spec_path)
    assert spec.cell("c").edges[0].op == "twice(k = 5)"
    assert [f.path for f in spec.op_files] == ["lib/mine.py"]
    assert print_spec(spec).startswith('ops "lib/mine.py"\n')
    # Written elsewhere, the path is made relative to where the text goes (outside the tree of that file
    # it loads only with --allow-include-outside; ops.bundle_op_files copies the files there instead).
    (tmp_path / "runs" / "a").mkdir(parents=True)
    assert print_spec(spec, tmp_path / "runs" / "a").startswith('ops "../../lib/mine.py"\n')
    assert print_spec(spec, tmp_path).startswith('ops "lib/mine.py"\n')


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('ops "../outside.py"', "is outside"),
        ('ops "mine.txt"', "an op file is a Python file (.py)"),
        ('ops "missing.py"', "cannot load ops from 'missing.py': no such file"),
        ('ops "boom.py"', "cannot load ops from 'boom.py': ZeroDivisionError: division by zero (line 2)"),
    ],
)
def test_bad_ops_lines_are_pointed_errors(scope, tmp_path, line, message):
    d = tmp_path / "spec"
    d.mkdir()
    _write(tmp_path, "outside.py", OP_FILE)
    _write(d, "mine.txt", OP_FILE)
    _write(d, "boom.py", "x = 1\ny = 1 / 0\n")
    spec_path = _write(d, "s.cell", line + "\n")
    from nasir.api import load
    from nasir.diagnostics import DiagnosticError

    with pytest.raises(DiagnosticError) as info:
        load(spec_path)
    (diag,) = info.value.diagnostics
    assert (diag.span.line, diag.span.col) == (1, 1) and message in diag.message


def test_without_the_op_file_a_user_op_is_unknown_with_a_hint(scope):
    errs = errors_of("""
    cell c {
      inputs x
      nodes n0
      edges x -> n0 : twice
      output n0
    }
    """)
    assert errs == [(4, 19, "unknown op 'twice'")]


# ---- nasir ops, nasir info --input ---------------------------------------------------------------------


def test_nasir_ops_lists_builtins_and_the_specs_own_ops(tmp_path, capsys):
    import json

    from nasir.cli import main

    _write(tmp_path, "mine.py", OP_FILE)
    spec = _write(tmp_path, "s.cell", 'ops "mine.py"\nopset s = {free, twice(k = 5), mbconv(e = 2)}\n')
    assert main(["ops", str(spec), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["twice"]["origin"] == str((tmp_path / "mine.py").resolve()) and rows["twice"]["weights"]
    assert rows["twice"]["parameters"] == [{"name": "k", "type": "int", "default": 3}]
    assert rows["free"]["weights"] is False and rows["free"]["used"] == ["free"]
    assert rows["mbconv"]["used"] == ["mbconv(e = 2)"] and rows["sep_conv_3x3"]["origin"] == "built-in"
    assert [p["name"] for p in rows["mbconv"]["parameters"]] == ["k", "e", "se", "act"]
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert "twice" not in names and "free" not in names and "dua_sepc_5x5" in names  # the first command's scope ended


def test_info_at_another_input_counts_the_backbone_macs(tmp_path):
    from nasir.measure import info

    spec = _write(tmp_path, "t.cell", """
    cell c {
      inputs x
      nodes n0
      edges x -> n0 : nor_conv_1x1
      output n0
    }
    network t(C = 4) {
      input (3, 8, 8)
      stem conv3x3(C), bn
      stack 1 cells(C): c
      head global_avg_pool, linear(10)
    }
    """)
    d = info(spec, input_shape=(3, 32, 20))
    C, H, W = 4, 32, 20
    stem = C * H * W * 3 * 9  # conv 3x3, 3 -> C, padding 1
    cell = C * H * W * C  # nor_conv_1x1: conv 1x1 C -> C
    head = C * 10
    assert d["at_input"] == {"input": [3, 32, 20], "macs": stem + cell + head, "backbone_macs": stem + cell,
                             "backbone_flops": 2 * (stem + cell)}  # fmt: skip
    assert d["macs"] == 4 * 8 * 8 * 27 + 4 * 8 * 8 * 4 + head  # the default input is unchanged


def test_a_failing_or_wrong_builder_is_a_diagnostic_naming_the_op(scope, tmp_path):
    from nasir.diagnostics import DiagnosticError

    ops.load_file(_write(tmp_path, "odd.py", """
    from nasir.ops import op


    @op("halves")
    def halves(C, stride, affine):
        if C % 2:
            raise ValueError("odd channels")


    @op("nothing")
    def nothing(C, stride, affine):
        return 3
    """))
    with pytest.raises(DiagnosticError, match=r"op 'halves' \(.*odd.py\) failed to build with C = 3, stride = 1: "
                       r"ValueError: odd channels \(line 8\)"):  # fmt: skip
        ops.REGISTRY["halves"].build(3, 1)
    with pytest.raises(DiagnosticError, match="op 'nothing' .* returned int, not an nn.Module"):
        ops.REGISTRY["nothing"].build(4, 1)
