"""Issue 14's guarantees for the recurrent runtime (nasir/rnn), through the same modules as the CNN one:
provenance recorded and compared on resume (nasir/provenance.py), a non-finite loss stopping the run
with its epoch and step named and nothing non-finite written (nasir/finite.py), `--out` checked before
any work (a run in it refused unless --resume / --overwrite, a file a diagnostic, stale `.*.tmp` removed),
non-finite settings refused."""

import json
from pathlib import Path

import pytest
import torch

from nasir.diagnostics import DiagnosticError
from nasir.rnn import api
from nasir.rnn.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
PTB, V2CELL = ROOT / "examples" / "ptb.cell", ROOT / "examples" / "darts_v2_rnn.cell"
SEARCH = dict(overrides=["size=4"], epochs=2, batch_size=8, limit_batches=2, bptt=5, progress=False, artifacts=False, device="cpu")
TRAIN = dict(overrides=["size=4"], epochs=2, batch_size=8, limit_batches=2, bptt=5, progress=False, device="cpu")
TRAIN_ARGS = ["--set", "size=4", "--epochs", "1", "--batch-size", "8", "--limit-batches", "2", "--bptt", "5", "--device", "cpu"]


def all_finite(state) -> bool:
    """Every floating tensor of a (nested) checkpoint finite: the test's own walk, not nasir.finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(all_finite(v) for v in state)
    return True


def poisoned(module, monkeypatch, at_call: int):
    """Replace module.weight_step by one whose `at_call`-th call (1-based) returns a NaN loss and leaves NaN weights."""
    real, calls = module.weight_step, []

    def step(model, optimizer, *a, **k):
        nll, h = real(model, optimizer, *a, **k)
        calls.append(1)
        if len(calls) == at_call:
            with torch.no_grad():
                for g in optimizer.param_groups:
                    for p in g["params"]:
                        p.fill_(float("nan"))
            nll = torch.full_like(nll, float("nan"))
        return nll, h

    monkeypatch.setattr(module, "weight_step", step)
    return calls


# ---- provenance -----------------------------------------------------------------------------------
def test_search_records_provenance_and_refuses_a_resume_with_another_seed_naming_it(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        api.search(PTB, "embedded", tmp_path, stop_after_steps=1, seed=1, **SEARCH)
    stored = json.loads((tmp_path / "provenance.json").read_text())
    ck = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert stored["seed"] == 1 and ck["provenance"]["seed"] == 1 and stored["overrides"] == {"size": "4"}
    assert ck["provenance"]["spec_sha256"] == stored["spec_sha256"]
    with pytest.raises(DiagnosticError, match="seed: 1 then, 2 now"):
        api.search(PTB, "embedded", tmp_path, resume=True, seed=2, **SEARCH)
    with pytest.raises(DiagnosticError, match="overrides: size=4 then, size=6 now"):
        api.search(PTB, "embedded", tmp_path, resume=True, seed=1, **{**SEARCH, "overrides": ["size=6"]})
    api.search(PTB, "embedded", tmp_path, resume=True, seed=1, **SEARCH)  # the same run resumes


def test_train_resume_with_another_spec_is_refused_naming_the_line(tmp_path):
    other = tmp_path / "other.cell"
    other.write_text(V2CELL.read_text().replace("edges  s5 -> s8 : relu", "edges  s5 -> s8 : tanh"))  # same state dict
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        api.train(V2CELL, "embedded", out, stop_after_steps=1, **TRAIN)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["provenance"]["kind"] == "recurrent-train"
    with pytest.raises(DiagnosticError, match=r"the spec differs \(canonical line \d+: then 's8 = relu\(s5\)', now 's8 = tanh\(s5\)'"):
        api.train(other, "embedded", out, resume=True, **TRAIN)
    with pytest.raises(DiagnosticError, match="seed: 1267 then, 5 now"):
        api.train(V2CELL, "embedded", out, resume=True, **{**TRAIN, "seed": 5})


# ---- non-finite losses ----------------------------------------------------------------------------
def test_a_nan_in_the_search_is_named_and_nothing_non_finite_or_derived_is_written(tmp_path, monkeypatch):
    import nasir.rnn.search as search_mod

    calls = poisoned(search_mod, monkeypatch, at_call=3)  # epoch 2 (limit 2 steps an epoch), its step 1
    with pytest.raises(DiagnosticError, match="the training loss is nan at epoch 2, step 1") as e:
        api.search(PTB, "embedded", tmp_path, **SEARCH)
    assert len(calls) == 3  # stopped at once on the CPU
    assert "checkpoint.pt keeps the last finite state" in str(e.value.render())
    ck = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and all_finite(ck)
    assert not (tmp_path / "derived.cell").exists() and not (tmp_path / "genotype.txt").exists()
    assert all(all_finite(torch.tensor(v)) for v in json.loads((tmp_path / "alphas.json").read_text()).values())


def test_a_nan_in_training_is_named_and_no_non_finite_weights_are_written(tmp_path, monkeypatch):
    import nasir.rnn.train as train_mod

    poisoned(train_mod, monkeypatch, at_call=4)  # epoch 2, step 2
    with pytest.raises(DiagnosticError, match="the training loss is nan at epoch 2, step 2"):
        api.train(V2CELL, "embedded", tmp_path, **TRAIN)
    ck = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and all_finite(ck)
    assert all_finite(torch.load(tmp_path / "model.pt", weights_only=True))
    assert not (tmp_path / "result.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("flag, value, message", [("--lr", "nan", "--lr must be a finite number > 0, got nan"),
                                                  ("--lr", "inf", "--lr must be a finite number > 0, got inf"),
                                                  ("--lr", "-1", "--lr must be > 0, got -1.0")])  # fmt: skip
def test_non_finite_settings_are_refused_before_any_work(tmp_path, capsys, flag, value, message):
    assert main(["train", str(V2CELL), "--out", str(tmp_path / "t"), *TRAIN_ARGS, flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "t").exists()
    assert main(["search", str(PTB), "--out", str(tmp_path / "s"), "--set", "size=4", "--epochs", "1", flag, value]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "s").exists()


# ---- nothing lost -------------------------------------------------------------------------------
def test_train_out_holding_a_run_is_refused_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", str(V2CELL), "--out", str(out), *TRAIN_ARGS]) == 0
    before = (out / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", str(V2CELL), "--out", str(out), *TRAIN_ARGS, "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--overwrite" in err and (out / "model.pt").read_bytes() == before
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # left by a kill during an atomic write
    assert main(["train", str(V2CELL), "--out", str(out), *TRAIN_ARGS, "--seed", "7", "--overwrite"]) == 0
    assert not (out / ".checkpoint.pt.abc123.tmp").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # one run's epoch, not two interleaved
    assert json.loads((out / "provenance.json").read_text())["seed"] == 7
    assert (out / "model.pt").read_bytes() != before
    assert main(["train", str(V2CELL), "--out", str(out), *TRAIN_ARGS, "--resume", "--overwrite"]) == 2


def test_search_out_holding_a_search_is_refused(tmp_path, capsys):
    args = ["search", str(PTB), "--out", str(tmp_path), "--set", "size=4", "--epochs", "1", "--batch-size", "8",
            "--limit-batches", "1", "--bptt", "5", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    derived = (tmp_path / "derived.cell").read_text()
    assert main([*args, "--seed", "9"]) == 2
    assert "already holds a search (checkpoint.pt)" in capsys.readouterr().err
    assert (tmp_path / "derived.cell").read_text() == derived


@pytest.mark.parametrize("command", ["train", "search"])
def test_out_that_is_a_file_or_under_a_file_is_a_diagnostic(tmp_path, capsys, command):
    f = tmp_path / "f.txt"
    f.write_text("not a directory\n")
    spec = V2CELL if command == "train" else PTB
    for out in (f, f / "run"):
        assert main([command, str(spec), "--out", str(out), "--set", "size=4", "--epochs", "1", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"'{f}' is a file, not a directory" in err and "Traceback" not in err
    assert f.read_text() == "not a directory\n"
