"""TorchScript, torch.export and ONNX artifacts: loadable, dynamic batch, inference-only graphs, parity with PyTorch."""

from __future__ import annotations

import onnx
import pytest
import torch
from helpers import EXAMPLES
from torch import nn

from nasir.diagnostics import DiagnosticError
from nasir.lower import build
from nasir.targets import export

SETS = ["C=8", "layers=5", "auxiliary=true"]


def randomise_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """BN statistics and affine parameters away from their defaults: BN folding must then get every number right."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            if m.affine:
                m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


@pytest.fixture(scope="module")
def model():
    """DARTS_V2 at C = 8, 5 layers, with its auxiliary head, in training mode (the exporters must switch to eval)."""
    m = randomise_bn(build(EXAMPLES / "darts_v2.cell", overrides=SETS))
    return m.train()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export.to_onnx(model, torch.randn(1, 3, 32, 32), path)
    return path


def test_onnx_has_named_inputs_outputs_dynamic_batch_and_opset_17(onnx_file):
    m = onnx.load(str(onnx_file))
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["logits"]
    in_dims = m.graph.input[0].type.tensor_type.shape.dim
    out_dims = m.graph.output[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in in_dims[1:]] == [3, 32, 32]
    assert out_dims[0].dim_param and out_dims[1].dim_value == 10
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_onnx_graph_is_inference_only(onnx_file, model):
    m = onnx.load(str(onnx_file))
    kinds = [n.op_type for n in m.graph.node]
    # The auxiliary head would add a second classifier (Gemm) and a 2x2 conv to 768 channels.
    assert kinds.count("Gemm") == 1
    conv_out = {init.name: init.dims[0] for init in m.graph.initializer}
    assert 768 not in {conv_out.get(n.input[1]) for n in m.graph.node if n.op_type == "Conv"}
    # No drop-path: no random ops; BN folded into the convolutions.
    assert not {"RandomUniform", "RandomUniformLike", "Bernoulli", "Dropout"} & set(kinds)
    assert kinds.count("BatchNormalization") < sum(isinstance(x, nn.BatchNorm2d) for x in model.modules()) // 10
    assert model.training  # the exporter restored the caller's mode


def test_onnx_runtime_matches_pytorch_eval_at_batch_1_and_8(onnx_file, model):
    diffs = export.parity(model, onnx_file, (1, 8))
    assert set(diffs) == {1, 8}
    assert max(diffs.values()) <= 1e-4
    with torch.no_grad(), export.eval_mode(model):
        assert model(torch.randn(2, 3, 32, 32)).std() > 1e-2  # outputs are not trivially near zero
    assert export.onnx_parity(model, onnx_file) == max(diffs.values())


def test_onnx_parity_detects_other_weights(onnx_file):
    other = randomise_bn(build(EXAMPLES / "darts_v2.cell", overrides=SETS, seed=1), seed=2)
    assert export.onnx_parity(other, onnx_file) > 1e-3


def test_torchscript_loads_with_jit_load_and_matches_at_two_batch_sizes(model, tmp_path):
    path = export.to_torchscript(model, torch.randn(1, 3, 32, 32), tmp_path / "m.pt")
    diffs = export.parity(model, path, (1, 8), input_shape=(3, 32, 32))
    assert max(diffs.values()) <= 1e-4
    assert model.training


def test_torch_export_pt2_loads_and_has_a_dynamic_batch(model, tmp_path):
    path = export.to_export(model, torch.randn(1, 3, 32, 32), tmp_path / "m.pt2")
    program = torch.export.load(str(path))
    assert len(program.graph_signature.user_outputs) == 1  # logits only: no auxiliary head
    diffs = export.parity(model, path, (1, 8), input_shape=(3, 32, 32))
    assert max(diffs.values()) <= 1e-4


def test_opset_below_17_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export.to_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx", opset=13)
    assert list(tmp_path.iterdir()) == []


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("target", ["onnx", "torchscript", "export"])
def test_a_failed_export_leaves_no_file(tmp_path, target):
    fn = {"onnx": export.to_onnx, "torchscript": export.to_torchscript, "export": export.to_export}[target]
    with pytest.raises(Exception, match="boom"):
        fn(_Broken(), torch.randn(1, 3, 8, 8), tmp_path / "out.bin")
    assert list(tmp_path.iterdir()) == []


def test_loading_a_corrupt_model_is_a_diagnostic(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DiagnosticError, match=f"cannot load model '{bad}'"):
        export.load_runner(bad)


# ---- a model on another device (CUDA is simulated: no GPU here) -----------------------------------
class _CapturedError(Exception):
    pass


@pytest.mark.parametrize("target", ["onnx", "torchscript", "export"])
def test_exporters_give_a_model_on_another_device_its_example_on_that_device(target, tmp_path, monkeypatch):
    """A model on `meta` stands for one on a GPU: the tracer must see the example on the model's device
    (a CPU example with CUDA weights fails in the first convolution)."""
    seen = []

    def capture(model, args, *a, **k):
        seen.append(args[0] if isinstance(args, tuple) else args)
        raise _CapturedError

    patch = {"onnx": (torch.onnx, "export"), "torchscript": (torch.jit, "trace"), "export": (torch.export, "export")}[target]
    monkeypatch.setattr(*patch, capture)
    fn = {"onnx": export.to_onnx, "torchscript": export.to_torchscript, "export": export.to_export}[target]
    meta = build(EXAMPLES / "darts_v2.cell", overrides=["C=4", "layers=3"]).to("meta")
    with pytest.raises(_CapturedError):
        fn(meta, torch.zeros(1, 3, 32, 32), tmp_path / "out.bin")
    assert [x.device.type for x in seen] == ["meta"] and seen[0].shape[1:] == (3, 32, 32)
    assert list(tmp_path.iterdir()) == []


class _DeviceOutput(torch.Tensor):
    """An output as a CUDA model returns it: `.numpy()` refuses, `.cpu()` gives a host tensor."""

    def numpy(self, *a, **k):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")

    def cpu(self, *a, **k):
        return self.as_subclass(torch.Tensor)


class _OnDevice(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).as_subclass(_DeviceOutput)


def test_parity_reads_a_device_models_outputs_through_the_host_and_names_the_provider(onnx_file, model):
    want = export.parity(model, onnx_file, (1, 8))
    got = export.parity(_OnDevice(model), onnx_file, (1, 8))
    assert got == want and max(got.values()) <= 1e-4
    assert got.provider == "CPUExecutionProvider"  # the CPU onnxruntime wheel has no other


def test_onnx_runtime_provider_is_cuda_when_present_and_the_runner_names_the_one_it_runs_on(onnx_file, monkeypatch):
    import onnxruntime as ort

    assert export.onnx_providers("auto") == ["CPUExecutionProvider"]  # the CPU wheel, as installed here
    with pytest.raises(DiagnosticError, match="no CUDA execution provider"):
        export.onnx_providers("cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert export.onnx_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert export.onnx_providers("cpu") == ["CPUExecutionProvider"]
    # Asked for CUDA on a build without it, the session runs on the CPU, and the runner says so.
    monkeypatch.setattr(export, "onnx_providers", lambda provider="auto": ["CPUExecutionProvider"])
    assert export.load_runner(onnx_file)[1].provider == "CPUExecutionProvider"


def test_verify_export_prints_the_provider_it_ran_on(tmp_path, capsys):
    from nasir.cli import main

    flags = ["--set", "C=4", "--set", "layers=3"]
    assert main(["compile", str(EXAMPLES / "darts_v2.cell"), "--target", "onnx", "-o", str(tmp_path / "m.onnx"), *flags]) == 0
    assert main(["verify-export", str(tmp_path / "m.onnx"), "--spec", str(EXAMPLES / "darts_v2.cell"), *flags]) == 0
    out = capsys.readouterr().out
    assert "ran on CPUExecutionProvider" in out.splitlines() and "batch 8: max abs diff" in out


def test_packaging_installs_exactly_one_onnxruntime_wheel_per_extra():
    """onnxruntime and onnxruntime-gpu provide the same module: no install may pull both. The base has
    neither; `cpu` and `dev` (the README's CPU install) have the CPU wheel, `gpu` the GPU wheel alone."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    def name(requirement: str) -> str:
        return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()

    project = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())["project"]
    names = {k: {name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    ort = {"onnxruntime", "onnxruntime-gpu"}
    assert not {name(r) for r in project["dependencies"]} & ort
    assert names["cpu"] & ort == {"onnxruntime"} and names["dev"] & ort == {"onnxruntime"}
    assert names["gpu"] & ort == {"onnxruntime-gpu"} and not names["tools"] & ort  # GPU development: '.[gpu,tools]'
