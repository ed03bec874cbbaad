"""Issue 14, runtime half: finite checks, provenance, nothing lost (training side).

Each test fails on the code before the fix: verify-export passed NaN, training went on through NaN and
saved it, --grad-clip 0 zeroed every gradient, --resume/eval/--weights took another spec or split
without a word, and train --out overwrote a run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import spec_of

from nasir import finite
from nasir import provenance as prov
from nasir.cli import main
from nasir.diagnostics import DiagnosticError
from nasir.train import TrainConfig, evaluate_checkpoint, load_checkpoint, train

TINY = """
cell normal {
  inputs c_k2, c_k1
  n0 = sep_conv_3x3(c_k2) + skip_connect(c_k1)
  n1 = max_pool_3x3(n0) + sep_conv_3x3(c_k1)
  output concat(n0, n1)
}
cell reduce {
  inputs c_k2, c_k1
  stride 2 from inputs
  n0 = max_pool_3x3(c_k2) + sep_conv_3x3(c_k1)
  n1 = skip_connect(n0) + avg_pool_3x3(c_k1)
  output concat(n0, n1)
}
network tiny(C = 4, layers = 3, classes = 4) {
  input (1, 8, 8)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  head global_avg_pool, linear(classes)
}
"""
# The same state-dict layout, another architecture: max_pool_3x3 read as avg_pool_3x3 (parameter-free ops).
OTHER = TINY.replace("n1 = max_pool_3x3(n0)", "n1 = avg_pool_3x3(n0)")


def cfg(**kw):
    base = dict(epochs=2, batch_size=16, lr=0.05, limit_batches=2, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def all_finite(sd) -> bool:
    return all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


# ---- item 1: verify-export fails on NaN, and its tolerance is a finite number >= 0 -----------------
def test_verify_export_fails_when_the_outputs_are_nan(capsys, tmp_path):
    from nasir.lower import build

    (tmp_path / "t.cell").write_text(TINY)
    sd = build(tmp_path / "t.cell").state_dict()
    sd["classifier.weight"] = torch.full_like(sd["classifier.weight"], math.nan)  # the final linear: every logit NaN
    torch.save(sd, tmp_path / "w.pt")
    code, _, err = run(capsys, "compile", tmp_path / "t.cell", "-t", "torchscript", "--weights", tmp_path / "w.pt", "-o", tmp_path / "m.ts")
    assert code == 0, err
    code, out, err = run(capsys, "verify-export", tmp_path / "m.ts", "--spec", tmp_path / "t.cell", "--weights", tmp_path / "w.pt")
    assert code == 1 and "parity FAILED: not finite" in err and "ok" not in err, (out, err)
    assert "the exported model's output at batch 1 holds NaN or inf" in err
    for bad in ("nan", "-1", "inf"):
        code, _, err = run(capsys, "verify-export", tmp_path / "m.ts", "--spec", tmp_path / "t.cell", "--tolerance", bad)
        assert code == 2 and "finite number >= 0" in err and "Traceback" not in err, err


def test_verify_export_against_a_spec_with_other_input_channels_is_a_diagnostic(capsys, tmp_path):
    (tmp_path / "t.cell").write_text(TINY)
    (tmp_path / "rgb.cell").write_text(TINY.replace("input (1, 8, 8)", "input (3, 8, 8)"))
    assert run(capsys, "compile", tmp_path / "t.cell", "-t", "torchscript", "-o", tmp_path / "m.ts")[0] == 0
    code, _, err = run(capsys, "verify-export", tmp_path / "m.ts", "--spec", tmp_path / "rgb.cell")
    assert code == 2 and "cannot run on the spec's input (1, 3, 8, 8)" in err and "Traceback" not in err, err


# ---- item 2: finite settings, finite losses, nothing non-finite saved -------------------------------
@pytest.mark.parametrize("name, value", [("lr", math.nan), ("lr", math.inf), ("weight_decay", math.nan), ("grad_clip", -math.inf),
                                         ("drop_path", math.nan), ("momentum", math.nan)])  # fmt: skip
def test_non_finite_settings_are_refused(name, value):
    with pytest.raises(DiagnosticError) as e:
        TrainConfig.from_preset("digits", **{name: value})
    d = e.value.diagnostics[0]
    assert d.message.startswith(f"{name} must be a finite number") and d.setting == name  # named by the setting


def test_cli_refuses_lr_nan_and_an_overflowing_seed_at_the_flag(capsys, tmp_path):
    (tmp_path / "t.cell").write_text(TINY)
    for flag, value, message in (("--lr", "nan", "--lr must be a finite number >= 0, got nan"),
                                 ("--seed", "99999999999999999999", "out of range 0..4294967295")):  # fmt: skip
        code, _, err = run(capsys, "train", tmp_path / "t.cell", "--out", tmp_path / "o", flag, value)
        assert code == 2 and message in err and err.startswith("<command line>:1:") and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_nan_loss_stops_training_naming_its_step_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    """The loss of the 3rd training step (epoch 2, step 1 with 2 steps an epoch) is made NaN."""
    import nasir.train as tr

    real = tr.F.cross_entropy
    calls = {"train": 0}

    def poisoned(logits, y, **kw):
        loss = real(logits, y, **kw)
        if "reduction" in kw:  # the held-out evaluation sums
            return loss
        calls["train"] += 1
        return loss * math.nan if calls["train"] == 3 else loss

    monkeypatch.setattr(tr.F, "cross_entropy", poisoned)
    with pytest.raises(finite.NonFiniteError) as e:
        train(spec_of(TINY), "synthetic:64", tmp_path, cfg(epochs=3), progress=False)
    message = e.value.diagnostics[0].message
    assert e.value.step == 2 and "the training loss is nan at epoch 2, step 1 (of 2)" in message, message
    assert "keeps the last finite state (at the end of epoch 1)" in message
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["state"] == {"epoch": 1, "step": 0, "best": ck["state"]["best"], "metrics_lines": 1} and all_finite(ck["model"])
    assert all_finite(load_checkpoint(tmp_path / "best.pt")["model"])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_huge_learning_rate_stops_at_the_first_non_finite_loss_and_writes_nothing_non_finite(tmp_path):
    spec = spec_of(TINY)
    losses = []  # an independent record of every training loss, taken from the module's output
    import nasir.train as tr

    real = tr.F.cross_entropy

    def spy(logits, y, **kw):
        loss = real(logits, y, **kw)
        if "reduction" not in kw:
            losses.append(float(loss.detach()))
        return loss

    tr.F.cross_entropy, old = spy, tr.F.cross_entropy
    try:
        with pytest.raises(finite.NonFiniteError) as e:
            train(spec, "synthetic:64", tmp_path, cfg(lr=1e6, grad_clip=0.0, epochs=4, limit_batches=None), progress=False)
    finally:
        tr.F.cross_entropy = old
    first_bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
    assert e.value.step == first_bad and first_bad == len(losses) - 1  # stopped at once (the CPU checks each step)
    for name in ("best.pt", "last.pt"):
        if (tmp_path / name).exists():
            assert all_finite(load_checkpoint(tmp_path / name)["model"]), name


def test_finite_watch_keeps_the_first_bad_step_and_value():
    w = finite.FiniteWatch()
    assert w.first() is None
    for step, v in enumerate([1.0, 2.0, math.inf, math.nan, 3.0]):
        w.observe(torch.tensor(v), step)
    assert w.first() == (2, math.inf)
    w.reset()
    w.observe(torch.tensor([1.0, -math.inf]), 7)
    assert w.first() == (7, -math.inf)


def test_grad_clip_zero_means_no_clipping(tmp_path):
    """One step with --grad-clip 0 equals one step with a clip no gradient reaches (before: all zeroed)."""
    spec = spec_of(TINY)
    for name, clip in (("zero", 0.0), ("huge", 1e30)):
        with pytest.raises(KeyboardInterrupt):
            train(spec, "synthetic:64", tmp_path / name, cfg(grad_clip=clip, weight_decay=0.0), progress=False, stop_after_steps=1)
    a, b = (load_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("zero", "huge"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from nasir.lower import build

    init = build(spec, seed=3).state_dict()
    assert not torch.equal(a["classifier.weight"], init["classifier.weight"])  # the step did move the weights


# ---- item 3: provenance ---------------------------------------------------------------------------
def test_resume_with_another_architecture_or_seed_is_refused_saying_what_differs(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(spec_of(TINY), "synthetic:64", tmp_path, cfg(), progress=False, stop_after_steps=1)
    rec = json.loads((tmp_path / "provenance.json").read_text())
    assert rec == load_checkpoint(tmp_path / "last.pt")["provenance"] and rec["seed"] == 3
    assert rec["split"] == {"holdout": 0.2, "seed": 3} and rec["data"] == "synthetic:64"
    with pytest.raises(DiagnosticError) as e:
        train(spec_of(OTHER), "synthetic:64", tmp_path, cfg(), progress=False, resume=True)
    message = e.value.diagnostics[0].message
    assert "the spec differs" in message and "then 'n1 = max_pool_3x3(n0) + sep_conv_3x3(c_k1)'" in message
    assert "now 'n1 = avg_pool_3x3(n0) + sep_conv_3x3(c_k1)'" in message
    with pytest.raises(DiagnosticError, match="seed: 3 then, 4 now"):
        train(spec_of(TINY), "synthetic:64", tmp_path, cfg(seed=4), progress=False, resume=True)
    # comments and layout are not the architecture: the same spec reformatted resumes
    train(spec_of("# a comment\n" + TINY.replace("  n0 =", "    n0 =")), "synthetic:64", tmp_path, cfg(), progress=False, resume=True)


def test_eval_uses_the_training_split_and_refuses_another_seed(tmp_path):
    spec = spec_of(TINY)
    train(spec, "synthetic:80", tmp_path, cfg(epochs=1), progress=False)
    valid_acc = json.loads((tmp_path / "metrics.jsonl").read_text())["valid_acc"]
    loss, acc, n = evaluate_checkpoint(spec, tmp_path / "best.pt")  # data and seed from the checkpoint
    assert n == 16 and acc == valid_acc  # a fifth of 80 held out; the accuracy training measured on it
    with pytest.raises(DiagnosticError, match=r"split: holdout=0.2, seed=3 then, holdout=0.2, seed=0 now"):
        evaluate_checkpoint(spec, tmp_path / "best.pt", seed=0)
    with pytest.raises(DiagnosticError, match="data: synthetic:80 then, digits now"):
        evaluate_checkpoint(spec, tmp_path / "best.pt", "digits")


def test_weights_of_another_architecture_are_refused_by_compile_and_verify_export(capsys, tmp_path):
    (tmp_path / "t.cell").write_text(TINY)
    (tmp_path / "o.cell").write_text(OTHER)
    train(spec_of(TINY), "synthetic:64", tmp_path / "run", cfg(epochs=1), progress=False)
    best = tmp_path / "run" / "best.pt"
    code, _, err = run(capsys, "compile", tmp_path / "o.cell", "-t", "torchscript", "--weights", best, "-o", tmp_path / "m.ts")
    assert code == 2 and "the spec differs" in err and "avg_pool_3x3" in err and not (tmp_path / "m.ts").exists(), err
    code, _, err = run(capsys, "compile", tmp_path / "t.cell", "-t", "torchscript", "--weights", best, "--set", "C=8", "-o", tmp_path / "m.ts")
    assert code == 2 and "network: C=4" in err and "C=8" in err, err
    # C=4 is the default: the same network
    code, _, err = run(capsys, "compile", tmp_path / "t.cell", "-t", "torchscript", "--weights", best, "--set", "C=4", "-o", tmp_path / "m.ts")
    assert code == 0, err
    code, _, err = run(capsys, "verify-export", tmp_path / "m.ts", "--spec", tmp_path / "o.cell", "--weights", best)
    assert code == 2 and "the spec differs" in err, err
    code, _, err = run(capsys, "verify-export", tmp_path / "m.ts", "--spec", tmp_path / "t.cell", "--weights", best)
    assert code == 0, err


def test_provenance_compare_names_each_field():
    a = prov.record(spec_of(TINY), kind="train", overrides=["C=4"], seed=1, data="digits", split={"holdout": 0.2, "seed": 1})
    b = prov.record(spec_of(TINY), kind="train", overrides=["C=4"], seed=1, data="digits", split={"holdout": 0.2, "seed": 1})
    assert prov.compare(a, b) == [] and prov.compare(None, b) == []
    c = prov.record(spec_of(OTHER), kind="train", overrides=["C=5"], seed=2, data="synthetic:9", split={"holdout": 0.2, "seed": 2})
    diffs = prov.compare(a, c)
    assert [d.split(":")[0].split(" (")[0] for d in diffs] == ["the spec differs", "overrides", "seed", "data", "split"], diffs


# ---- item 7: train --out does not overwrite a run --------------------------------------------------
def test_train_refuses_an_out_holding_a_run_unless_overwrite(capsys, tmp_path):
    (tmp_path / "t.cell").write_text(TINY)
    argv = ["train", tmp_path / "t.cell", "--data", "synthetic:48", "--epochs", "1", "--batch-size", "16", "--out", tmp_path / "o"]
    assert run(capsys, *argv)[0] == 0
    before = (tmp_path / "o" / "best.pt").read_bytes()
    code, _, err = run(capsys, *argv)
    assert code == 2 and "already holds a training run (last.pt, best.pt, metrics.jsonl, provenance.json)" in err, err
    assert (tmp_path / "o" / "best.pt").read_bytes() == before
    (tmp_path / "o" / ".last.pt.abc123.tmp").write_bytes(b"x" * 10)  # left by a kill mid-write
    code, _, err = run(capsys, *argv, "--overwrite", "--seed", "5")
    assert code == 0, err
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 1  # replaced, not appended to
    assert load_checkpoint(tmp_path / "o" / "last.pt")["provenance"]["seed"] == 5
    assert not list((tmp_path / "o").glob(".*.tmp"))


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_train_out_that_is_a_file_is_a_diagnostic(capsys, tmp_path, where):
    (tmp_path / "t.cell").write_text(TINY)
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    code, _, err = run(capsys, "train", tmp_path / "t.cell", "--data", "synthetic:48", "--out", out)
    assert code == 2 and f"'{tmp_path / 'f'}' is a file, not a directory" in err and "Traceback" not in err, err


# ---- item 6: an untrained export records its seed, verify-export reads it --------------------------
def test_verify_export_takes_the_seed_an_onnx_file_records(capsys, tmp_path):
    from nasir.lower import build, example_input, resolve
    from nasir.targets import export

    (tmp_path / "t.cell").write_text(TINY)
    _, plan = resolve(tmp_path / "t.cell")
    model = build(tmp_path / "t.cell", seed=7)
    export.to_onnx(model, example_input(plan), tmp_path / "plain.onnx")
    export.to_onnx(model, example_input(plan), tmp_path / "m.onnx", metadata={"nasir.seed": "7", "nasir.weights": "untrained"})
    assert export.read_metadata(tmp_path / "m.onnx") == {"nasir.seed": "7", "nasir.weights": "untrained"}
    code, out, err = run(capsys, "verify-export", tmp_path / "plain.onnx", "--spec", tmp_path / "t.cell")
    assert code == 1 and "parity FAILED" in err  # seed 0 is another initialisation
    code, out, err = run(capsys, "verify-export", tmp_path / "m.onnx", "--spec", tmp_path / "t.cell")
    assert code == 0 and "seed 7 (recorded in" in out, (out, err)


def test_the_library_refuses_weights_of_another_architecture_and_records_an_onnx_seed(capsys, tmp_path):
    from nasir.lower import build, compile
    from nasir.targets import export

    (tmp_path / "t.cell").write_text(TINY)
    (tmp_path / "o.cell").write_text(OTHER)
    train(spec_of(TINY), "synthetic:64", tmp_path / "run", cfg(epochs=1), progress=False)
    best = tmp_path / "run" / "best.pt"
    # The library's own doors (not only the CLI) compare the weights' provenance.
    with pytest.raises(DiagnosticError, match="the spec differs"):
        build(tmp_path / "o.cell", weights=best)
    with pytest.raises(DiagnosticError, match="C=8"):
        compile(tmp_path / "t.cell", "onnx", tmp_path / "x.onnx", weights=best, overrides=["C=8"])
    assert not (tmp_path / "x.onnx").exists()
    # An untrained ONNX file from the library says so and records its seed; verify-export then needs no --seed.
    compile(tmp_path / "t.cell", "onnx", tmp_path / "m.onnx", seed=9)
    assert export.read_metadata(tmp_path / "m.onnx") == {"nasir.weights": "untrained", "nasir.seed": "9"}
    code, out, err = run(capsys, "verify-export", tmp_path / "m.onnx", "--spec", tmp_path / "t.cell")
    assert code == 0 and "seed 9 (recorded in" in out, (out, err)
    compile(tmp_path / "t.cell", "onnx", tmp_path / "w.onnx", weights=best)
    assert export.read_metadata(tmp_path / "w.onnx") == {"nasir.weights": "trained"}
