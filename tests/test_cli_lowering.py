"""The lowering commands end to end: compile (every target), verify-export, info, draw, import, export-genotype."""

from __future__ import annotations

import importlib.util
import json
import re

import onnx
import pytest
import torch
from helpers import EXAMPLES
from torch import nn

import nasir
from nasir.cli import main
from nasir.diagnostics import DiagnosticError
from nasir.lower import build

NB201_ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"
TARGETS = {"torch": "model.py", "torchscript": "model.ts", "export": "model.pt2", "onnx": "model.onnx"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def trained_checkpoint(spec, sets, path, seed=4):
    """A checkpoint whose BN statistics and affine parameters are far from their initial values."""
    model = build(spec, overrides=sets, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    torch.save({"model": model.state_dict(), "epoch": torch.tensor(600)}, path)
    return model.eval()


@pytest.fixture
def nb201_cell(tmp_path, capsys):
    arch = tmp_path / "arch.txt"
    arch.write_text(NB201_ARCH + "\n")
    out = tmp_path / "nb.cell"
    assert run(capsys, "import", arch, "--macro", "nb201", "-o", out)[0] == 0
    return out


def _case(case, nb201_cell):
    return {
        "darts_v2": (EXAMPLES / "darts_v2.cell", ["C=8", "layers=5", "auxiliary=true"], (3, 32, 32)),
        "darts_v2_imagenet": (EXAMPLES / "darts_v2_imagenet.cell", ["C=8", "layers=4"], (3, 224, 224)),
        "nb201": (nb201_cell, ["C=8", "N=1"], (3, 32, 32)),
    }[case]


@pytest.mark.parametrize("case", ["darts_v2", "darts_v2_imagenet", "nb201"])
def test_every_target_compiles_with_trained_weights_and_matches_pytorch(case, nb201_cell, tmp_path, capsys):
    spec, sets, shape = _case(case, nb201_cell)
    flags = [a for s in sets for a in ("--set", s)]
    ckpt = tmp_path / "trained.pt"
    model = trained_checkpoint(spec, sets, ckpt)
    for target, name in TARGETS.items():
        code, _, err = run(capsys, "compile", spec, "--target", target, "-o", tmp_path / name, "--weights", ckpt, *flags)
        assert code == 0, err
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    for name in ("model.onnx", "model.ts", "model.pt2"):
        code, out, err = run(capsys, "verify-export", tmp_path / name, "--spec", spec, "--weights", ckpt, *flags)
        assert code == 0, err
        diffs = dict(re.findall(r"batch (\d+): max abs diff (\S+)", out))
        assert set(diffs) == {"1", "8"} and max(map(float, diffs.values())) <= 1e-4, out
    # The standalone module with the weights written beside it reproduces the network.
    mod_spec = importlib.util.spec_from_file_location(f"generated_{case}", tmp_path / "model.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    net = mod.Network().eval()
    net.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = model(x)
        assert expected.std() > 1e-2
        assert (net(x) - expected).abs().max() <= 1e-6
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_verify_export_fails_with_exit_1_for_other_weights(tmp_path, capsys):
    flags = ["--set", "C=8", "--set", "layers=5"]
    assert run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "onnx", "-o", tmp_path / "m.onnx", *flags)[0] == 0
    code, out, err = run(capsys, "verify-export", tmp_path / "m.onnx", "--spec", EXAMPLES / "darts_v2.cell", "--seed", "1", *flags)
    assert code == 1 and "parity FAILED" in err
    assert run(capsys, "verify-export", tmp_path / "m.onnx", "--spec", EXAMPLES / "darts_v2.cell", *flags)[0] == 0


def test_compiling_a_search_space_is_exit_2_pointing_at_the_choice(tmp_path, capsys):
    code, _, err = run(capsys, "compile", EXAMPLES / "darts.cell", "--target", "onnx", "-o", tmp_path / "m.onnx")
    assert code == 2
    assert f"{EXAMPLES / 'darts.cell'}:7:3: error: cell 'normal' is a search space" in err
    assert "hint: derive one with 'nasir search'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_op_is_exit_2_with_position(tmp_path, capsys):
    bad = tmp_path / "bad.cell"
    bad.write_text((EXAMPLES / "darts_v2.cell").read_text().replace("dil_conv_3x3(n0)", "dil_conv_3x4(n0)"))
    code, _, err = run(capsys, "compile", bad, "--target", "torch", "-o", tmp_path / "m.py")
    assert code == 2
    assert re.search(rf"{re.escape(str(bad))}:8:\d+: error: unknown op 'dil_conv_3x4'", err)
    assert not (tmp_path / "m.py").exists()


@pytest.mark.parametrize("content, message", [
    (b"this is not a checkpoint", "not a PyTorch checkpoint"),
    (b"", "the file is empty or truncated"),
])  # fmt: skip
def test_unreadable_checkpoint_is_exit_2_naming_the_file(tmp_path, capsys, content, message):
    ckpt = tmp_path / "bad.pt"
    ckpt.write_bytes(content)
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "onnx", "-o", tmp_path / "m.onnx", "--weights", ckpt)
    assert code == 2 and f"nasir: error: cannot load checkpoint '{ckpt}': {message}" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_with_code_is_refused_not_run(tmp_path, capsys):
    ckpt = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "f": print}, ckpt)
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "onnx", "-o", tmp_path / "m.onnx", "--weights", ckpt)
    assert code == 2 and "it holds Python objects" in err


def test_checkpoint_that_does_not_fit_lists_missing_unexpected_and_mismatched_keys(tmp_path, capsys):
    flags = ["--set", "C=8", "--set", "layers=5"]
    sd = build(EXAMPLES / "darts_v2.cell", overrides=["C=8", "layers=5"]).state_dict()
    del sd["classifier.weight"], sd["classifier.bias"]
    sd["extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "other.pt"
    torch.save(sd, ckpt)
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "onnx", "-o", tmp_path / "m.onnx", "--weights", ckpt, *flags)
    assert code == 2
    assert f"checkpoint '{ckpt}' does not fit the network: missing classifier.weight, classifier.bias; unexpected extra.weight" in err
    assert "hint: was it trained with other network parameters?" in err
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "onnx", "-o", tmp_path / "m.onnx",
                       "--weights", ckpt, "--set", "C=12", "--set", "layers=5")  # fmt: skip
    assert code == 2 and "shapes differ for stem.0.weight (24, 3, 3, 3) vs (36, 3, 3, 3)" in err
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_trained_with_an_auxiliary_head_loads_into_the_inference_network(tmp_path, capsys):
    ckpt = tmp_path / "aux.pt"
    torch.save(build(EXAMPLES / "darts_v2.cell", overrides=["C=8", "layers=5", "auxiliary=true"]).state_dict(), ckpt)
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "torch", "-o", tmp_path / "m.py",
                       "--weights", ckpt, "--set", "C=8", "--set", "layers=5")  # fmt: skip
    assert code == 0, err
    assert not any(k.startswith("auxiliary_head.") for k in torch.load(tmp_path / "m.pt", weights_only=True))


def test_unwritable_output_is_exit_2_and_nothing_is_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "torch", "-o", blocker / "m.py")
    assert code == 2 and f"nasir: error: cannot write '{blocker / 'm.py'}': '{blocker}' is a file, not a directory" in err
    (tmp_path / "dir.onnx").mkdir()
    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "onnx", "-o", tmp_path / "dir.onnx",
                       "--set", "C=8", "--set", "layers=5")  # fmt: skip
    assert code == 2 and f"cannot write '{tmp_path / 'dir.onnx'}'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx", "file"] and not any((tmp_path / "dir.onnx").iterdir())


def test_retinanet_target_writes_a_detector_that_returns_torchvision_detections(tmp_path, capsys):
    import torch

    code, _, err = run(capsys, "compile", EXAMPLES / "darts_v2.cell", "--target", "retinanet", "-o", tmp_path / "det.pt",
                       "--set", "C=8", "--set", "layers=5")  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.onnx", "det.pt", "det.state_dict.pt"]
    det = torch.jit.load(str(tmp_path / "det.pt"))
    _, detections = det([torch.rand(3, 64, 64)])
    assert set(detections[0]) == {"boxes", "scores", "labels"} and detections[0]["boxes"].shape[1] == 4


def test_retinanet_needs_an_rgb_network(tmp_path, capsys):
    code, _, err = run(capsys, "compile", EXAMPLES / "digits.cell", "--target", "retinanet", "-o", tmp_path / "d.pt")
    assert code == 2 and "is a search space" in err  # a search space is refused before anything else
    assert list(tmp_path.iterdir()) == []


def test_info_prints_the_figures_and_json(capsys):
    code, out, _ = run(capsys, "info", EXAMPLES / "darts_v2.cell")
    assert code == 0 and "3,349,342" in out and "528,359,040" in out and "depth 3, width 3.5c" in out
    code, out, _ = run(capsys, "info", EXAMPLES / "nb201.cell", "--json")
    d = json.loads(out)
    # 5**6: the NB201 derivation takes the argmax over all 5 ops, 'none' included (tests/test_analysis.py)
    assert code == 0 and d["space"]["candidates"] == 5**6 and d["search_space"] is True


def test_info_with_a_bad_override_is_exit_2(capsys):
    code, _, err = run(capsys, "info", EXAMPLES / "darts_v2.cell", "--set", "layerz=3")
    assert code == 2 and "network 'cifar' has no parameter 'layerz'" in err and "did you mean 'layers'?" in err


def test_import_from_stdin_with_set_writes_the_defaults_into_the_file(tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(NB201_ARCH))
    out = tmp_path / "nb.cell"
    code, _, err = run(capsys, "import", "-", "--macro", "nb201", "--set", "C=8", "--set", "N=2", "-o", out)
    assert code == 0, err
    text = out.read_text()
    assert "network nb201(C = 8, N = 2, classes = 10)" in text and "# The NAS-Bench-201 network" in text
    code, printed, _ = run(capsys, "export-genotype", out)
    assert code == 0 and printed.strip() == NB201_ARCH


def test_import_with_an_unknown_parameter_is_exit_2_and_writes_nothing(tmp_path, capsys):
    arch = tmp_path / "arch.txt"
    arch.write_text(NB201_ARCH)
    code, _, err = run(capsys, "import", arch, "--macro", "nb201", "--set", "layers=3", "-o", tmp_path / "nb.cell")
    assert code == 2 and "has no parameter 'layers'" in err
    assert not (tmp_path / "nb.cell").exists()


def test_export_genotype_round_trips_through_import(tmp_path, capsys):
    code, genotype, _ = run(capsys, "export-genotype", EXAMPLES / "darts_v2.cell")
    assert code == 0 and genotype.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1),")
    (tmp_path / "g.txt").write_text(genotype)
    assert run(capsys, "import", tmp_path / "g.txt", "--macro", "cifar", "-o", tmp_path / "v2.cell")[0] == 0
    code, out, _ = run(capsys, "info", tmp_path / "v2.cell", "--json")
    assert json.loads(out)["params_no_aux"] == 3_349_342


def test_draw_writes_the_image(tmp_path, capsys):
    code, _, err = run(capsys, "draw", EXAMPLES / "darts_v2.cell", "-o", tmp_path / "cells.svg")
    assert code == 0 and "sep_conv_3x3" in (tmp_path / "cells.svg").read_text()
    code, _, err = run(capsys, "draw", EXAMPLES / "darts_v2.cell", "-o", tmp_path / "cells.gif")
    assert code == 2 and "must end in .png or .svg" in err


LM_SETS = ["--set", "size=8", "--set", "tokens=30"]


@pytest.mark.parametrize("target,name", [("onnx", "lm.onnx"), ("torchscript", "lm.ts")])
def test_verify_export_of_a_language_model_feeds_it_words_and_a_hidden_state(target, name, tmp_path, capsys):
    # an image input fails on a language model's export (it takes words [T, B] and hidden [B, nhid]);
    # the file must match PyTorch with the weights it was compiled with, and only with those
    spec = EXAMPLES / "darts_v2_rnn.cell"
    model = nasir.build(spec, overrides=LM_SETS[1::2], seed=3)
    g = torch.Generator().manual_seed(5)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    assert run(capsys, "compile", spec, "-t", target, "-o", tmp_path / name, "--weights", tmp_path / "w.pt", *LM_SETS)[0] == 0
    code, out, err = run(capsys, "verify-export", tmp_path / name, "--spec", spec, "--weights", tmp_path / "w.pt", *LM_SETS)
    assert code == 0 and "ok: within" in err, err
    diffs = [float(x) for x in re.findall(r"batch (?:1|8): max abs diff (\S+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-5
    code, out, err = run(capsys, "verify-export", tmp_path / name, "--spec", spec, *LM_SETS)  # seeded weights, not w.pt
    assert code == 1 and "parity FAILED" in err
    code, _, err = run(capsys, "verify-export", tmp_path / name, "--spec", spec, "--weights", tmp_path / "w.pt", "--set", "size=8")
    assert code == 2 and "do not fit this model" in err  # the spec's 10,000 words: the weights hold 30


def test_verify_export_of_a_language_model_refuses_an_image_model_and_pt2(tmp_path, capsys):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "image", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "image.onnx")
    spec = EXAMPLES / "darts_v2_rnn.cell"
    code, _, err = run(capsys, "verify-export", tmp_path / "image.onnx", "--spec", spec, *LM_SETS)
    assert code == 2 and "takes the inputs input; a language model's export takes words, hidden" in err
    (tmp_path / "lm.pt2").write_bytes(b"PK")
    code, _, err = run(capsys, "verify-export", tmp_path / "lm.pt2", "--spec", spec, *LM_SETS)
    assert code == 2 and "a language model exports to ONNX or TorchScript, not .pt2" in err
    # the library's image-model check refuses a language model rather than feed it an image
    from nasir.lower import verify_export

    with pytest.raises(DiagnosticError, match="this is a language model"):
        verify_export(tmp_path / "image.onnx", spec, overrides=LM_SETS[1::2])


def test_an_untrained_language_model_onnx_records_its_seed_for_verify_export(tmp_path, capsys):
    spec = EXAMPLES / "darts_v2_rnn.cell"
    assert run(capsys, "compile", spec, "-t", "onnx", "-o", tmp_path / "lm.onnx", "--seed", "3", *LM_SETS)[0] == 0
    meta = {p.key: p.value for p in onnx.load(tmp_path / "lm.onnx").metadata_props}
    assert meta == {"nasir.seed": "3", "nasir.weights": "untrained"}
    code, out, err = run(capsys, "verify-export", tmp_path / "lm.onnx", "--spec", spec, *LM_SETS)
    assert code == 0 and "seed 3 (recorded in" in out, err
    assert run(capsys, "verify-export", tmp_path / "lm.onnx", "--spec", spec, "--seed", "0", *LM_SETS)[0] == 1
