"""The standalone torch target: generated source against the in-process network and the registry's builders."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import EXAMPLES, spec_of
from torch import nn

from nasir.api import load
from nasir.diagnostics import DiagnosticError
from nasir.lower import compile, resolve, weights_path
from nasir.ops import REGISTRY
from nasir.targets import blocks, network, torch_source

NB201_MIXED = """
cell nbcell {
  inputs x
  n1 = nor_conv_3x3(x)
  n2 = none(x) + avg_pool_3x3(n1)
  n3 = skip_connect(x) + nor_conv_1x1(n1) + nor_conv_3x3(n2)
  output n3
}
network nb201(C = 8, N = 1, classes = 10) {
  input (3, 32, 32)
  stem  conv3x3(C), bn
  stack N cells(C): nbcell
  residual(2 * C)
  stack N cells(2 * C): nbcell
  residual(4 * C)
  stack N cells(4 * C): nbcell
  head  bn, relu, global_avg_pool, linear(classes)
}
"""

CASES = {
    "darts_v2_aux": (EXAMPLES / "darts_v2.cell", ["C=8", "layers=5", "auxiliary=true"]),
    "imagenet_aux": (EXAMPLES / "darts_v2_imagenet.cell", ["C=8", "layers=4", "auxiliary=true"]),
    "nb201": (NB201_MIXED, []),
}


def generated(case: str):
    src, sets = CASES[case]
    spec, plan = resolve(load(src, name="nb.cell", overrides=sets), sets)
    namespace: dict = {"__name__": f"generated_{case}"}
    exec(compile_source(spec, plan), namespace)  # the module text, run as Python
    return spec, plan, namespace


def compile_source(spec, plan) -> str:
    return torch_source.generate(spec, plan, spec.file)


def randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """BN statistics and affine parameters away from their defaults, so that outputs depend on every weight."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            if m.affine:
                m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


def _block_namespace() -> dict:
    ns: dict = {"torch": torch, "nn": nn}
    exec(torch_source.block_source(set(torch_source.BLOCKS)), ns)
    return ns


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_emitted_op_expression_builds_what_the_registry_builds(name, stride):
    ns = _block_namespace()
    code = torch_source.op_code(name, stride)
    exec(f"op = {code.expr}", ns, scope := {"C": 6})  # run the emitted constructor expression
    emitted = scope["op"]
    built = REGISTRY[name].build(6, stride)
    assert {k: v.shape for k, v in emitted.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    randomise_bn(built)
    emitted.load_state_dict(built.state_dict())
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        assert torch.equal(emitted.eval()(x), built.eval()(x))
    assert code.identity == isinstance(built, nn.Identity)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_network_has_the_state_dict_keys_and_seeded_weights_of_the_in_process_one(case):
    spec, plan, ns = generated(case)
    torch.manual_seed(0)
    gen = ns["Network"]()
    ref = network.build(spec, plan, seed=0)
    assert list(gen.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(gen.state_dict().values(), ref.state_dict().values()))
    assert blocks.count_params(gen) == blocks.count_params(ref)


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_load_either_way_with_identical_outputs(case):
    spec, plan, ns = generated(case)
    ref = randomise_bn(network.build(spec, plan, seed=3)).eval()
    gen = ns["Network"]().eval()
    gen.load_state_dict(ref.state_dict())
    x = torch.randn(2, *plan.input)
    with torch.no_grad():
        out = ref(x)
        assert out.abs().max() > 1e-3  # not a degenerate all-zero comparison
        assert (gen(x) - out).abs().max() <= 1e-6
        back = network.build(spec, plan, seed=7).eval()
        back.load_state_dict(gen.state_dict())
        assert (back(x) - out).abs().max() <= 1e-6


def test_training_with_auxiliary_head_returns_both_logits_like_the_in_process_network():
    spec, plan, ns = generated("darts_v2_aux")
    torch.manual_seed(0)
    gen = ns["Network"]().train()
    ref = network.build(spec, plan, seed=0).train()
    x = torch.randn(4, *plan.input)
    (a, a_aux), (b, b_aux) = gen(x), ref(x)
    assert a_aux.shape == (4, 10)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a_aux, b_aux, atol=1e-6)


def test_drop_path_draws_match_the_in_process_network_in_training():
    spec, plan, ns = generated("darts_v2_aux")
    torch.manual_seed(0)
    gen = ns["Network"](drop_path_prob=0.4).train()
    ref = network.build(spec, plan, seed=0).train()
    ref.drop_path_prob = 0.4
    assert gen.drop_path_prob == 0.4
    x = torch.randn(4, *plan.input)
    torch.manual_seed(11)
    a, _ = gen(x)
    torch.manual_seed(11)
    b, _ = ref(x)
    torch.manual_seed(12)
    c, _ = ref(x)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(b, c, atol=1e-3)  # the masks are random: another seed, other outputs


def test_drop_path_spares_identity_ops():
    spec = spec_of("""
        cell c {
          inputs a, b
          n0 = skip_connect(a) + max_pool_3x3(b)
          output concat(n0)
        }
    """)
    src, needs = torch_source.cell_class(spec.cell("c"))
    ns = _block_namespace()
    exec(src, ns)
    cell = ns["Cell_c"](4, 4, 4, False, drop_prob=1.0).train()
    s0, s1 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = cell.preprocess0(s0)  # the skip survives whole, the pooled branch is dropped (p = 1)
        assert torch.equal(cell(s0, s1), expected)


def test_cell_forward_is_straight_line_code():
    spec, plan, _ = generated("darts_v2_aux")
    text = compile_source(spec, plan)
    normal = text[text.index("class Cell_normal"): text.index("class Cell_reduce")]
    forward = normal[normal.index("    def forward") :].strip().splitlines()
    # darts_v2.cell: n2 = sep_conv_3x3(c_k1) + skip_connect(c_k2); the skip is an identity, never dropped.
    assert forward[1:] == [
        "        s0 = self.preprocess0(s0)",
        "        s1 = self.preprocess1(s1)",
        "        n0 = self.drop(self._ops[0](s0)) + self.drop(self._ops[1](s1))",
        "        n1 = self.drop(self._ops[2](s0)) + self.drop(self._ops[3](s1))",
        "        n2 = self.drop(self._ops[4](s1)) + self._ops[5](s0)",
        "        n3 = self._ops[6](s0) + self.drop(self._ops[7](n0))",
        "        return torch.cat([n0, n1, n2, n3], dim=1)",
    ]
    assert "class Cell_normal(nn.Module)" in text and "class Cell_reduce(nn.Module)" in text
    assert "def __init__(self, C_pp: int, C_p: int, C: int, reduction_prev: bool, drop_prob: float = 0.0)" in normal
    assert "import nasir" not in text and "from nasir" not in text


def test_node_names_that_are_not_python_names_get_safe_variables():
    spec = spec_of("""
        cell c {
          inputs s1, x
          nodes class, s0
          edges s1 -> class : sep_conv_3x3
          edges x -> s0 : skip_connect
          edges class -> s0 : skip_connect
          output concat(class, s0)
        }
    """)
    src, _ = torch_source.cell_class(spec.cell("c"))
    ns = _block_namespace()
    exec(src, ns)  # would be a SyntaxError with `class = ...`
    cell = ns["Cell_c"](4, 4, 4, False).eval()
    assert cell(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)).shape == (1, 8, 8, 8)


def test_search_space_cell_is_refused():
    spec = load(EXAMPLES / "darts.cell")
    with pytest.raises(DiagnosticError, match="search space"):
        torch_source.cell_class(spec.cell("normal"))


def test_compiled_file_runs_with_torch_only_and_loads_the_weights_written_beside_it(tmp_path):
    spec_path, sets = CASES["darts_v2_aux"]
    ckpt = tmp_path / "trained.pt"
    model = randomise_bn(network.build(*resolve(load(spec_path, overrides=sets), sets), seed=5))
    torch.save(model.state_dict(), ckpt)
    out = compile(spec_path, "torch", tmp_path / "model.py", weights=ckpt, overrides=sets)
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model.eval()(x), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, sys

        class NoNasir(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "nasir" or name.startswith("nasir."):
                    raise ImportError("nasir is not importable here")

        sys.meta_path.insert(0, NoNasir())
        import torch
        torch.set_num_threads(1)
        spec = importlib.util.spec_from_file_location("model", {str(out)!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        net = mod.Network().eval()
        net.load_state_dict(torch.load({str(weights_path(out))!r}, weights_only=True))
        with torch.no_grad():
            got = net(torch.load({str(tmp_path / "x.pt")!r}))
        diff = (got - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item()
        print(diff, any(m == "nasir" or m.startswith("nasir.") for m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    diff, leaked = r.stdout.split()
    assert float(diff) <= 1e-6 and leaked == "False"


def test_generated_module_with_mbconv_autodl_and_a_users_op_matches_the_in_process_network(tmp_path):
    from nasir import ops

    (tmp_path / "mine.py").write_text(
        "from torch import nn\nfrom nasir.ops import op\n\n\n"
        "@op('gconv', params={'k': 3})\ndef gconv(C, stride, affine, k=3):\n"
        "    return nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, k, stride, k // 2, groups=2, bias=False), nn.BatchNorm2d(C, affine=affine))\n"
    )  # fmt: skip
    (tmp_path / "s.cell").write_text(textwrap.dedent("""\
        ops "mine.py"
        cell c {
          inputs c_k2, c_k1
          nodes n0, n1
          edges c_k2 -> n0 : mbconv(k = 5, e = 2, se = 0.5)
          edges c_k1 -> n0 : gconv(k = 5)
          edges n0 -> n1 : dua_sepc_3x3
          edges c_k1 -> n1 : conv_3x1_1x3
          output concat(n0, n1)
        }
        cell r like c { stride 2 from inputs }
        network t(C = 4) {
          input (3, 8, 8)
          stem conv3x3(3 * C), bn
          stack 3 cells(C): c, r at 1/2
          head global_avg_pool, linear(10)
        }
        """))
    with ops.scope():
        spec, plan = resolve(load(tmp_path / "s.cell"), [])
        text = torch_source.generate(spec, plan, spec.file)
        ref = randomise_bn(network.build(spec, plan, seed=3)).eval()
    assert f"user_op({str((tmp_path / 'mine.py').resolve())!r}, 'gconv')(C, 1, True, k=5)" in text
    assert "class MBConv(nn.Module)" in text and "class DualSepConv(nn.Module)" in text
    ns: dict = {"__name__": "generated_user_ops"}
    exec(text, ns)  # outside the scope: the generated module imports the op file itself
    gen = ns["Network"]().eval()
    assert list(gen.state_dict()) == list(ref.state_dict())
    gen.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = ref(x)
        assert out.abs().max() > 1e-3 and (gen(x) - out).abs().max() <= 1e-6
