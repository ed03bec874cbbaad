"""The search job end to end on a tiny space: outputs, determinism, resume, errors, the CLI skin."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from helpers import EXAMPLES, spec_of

from nasir.api import load
from nasir.diagnostics import DiagnosticError
from nasir.search.cli import add_search_parser, run_search
from nasir.search.runner import SearchInterrupted, make_options, search

SPEC = EXAMPLES / "digits.cell"
TINY = dict(data="synthetic:32", overrides=["C=4", "layers=3"], epochs=2, batch_size=8, seed=0, device="cpu",
            progress=False)  # fmt: skip
STEPS = 2  # 32 images -> halves of 16 -> 2 batches of 8 per epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return search(SPEC, out=tmp_path_factory.mktemp("ref"), **TINY)


def _same_result(a, b) -> None:
    for name in ("derived.cell", "alphas.json", "alphas/epoch_001.json", "alphas/epoch_002.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    drop = ("time_s", "train_s")
    assert [{k: v for k, v in m.items() if k not in drop} for m in ma] == [{k: v for k, v in m.items() if k not in drop} for m in mb]


def test_search_writes_every_output(reference):
    out = reference.out
    names = ("derived.cell", "genotype.txt", "alphas.json", "metrics.jsonl", "checkpoint.pt", "derived.onnx", "derived.png", "alphas.png")
    for name in names:
        assert (out / name).is_file(), name
    assert (out / "derived.png").read_bytes()[:4] == (out / "alphas.png").read_bytes()[:4] == b"\x89PNG"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all(m["steps"] == STEPS for m in metrics)
    assert {"train_loss", "train_acc", "arch_loss", "valid_loss", "valid_acc", "lr", "time_s", "genotype"} <= set(metrics[0])
    assert metrics[0]["lr"] == 0.025 and metrics[1]["lr"] == pytest.approx(0.001 + 0.024 * 0.5)  # cosine, T = 2 epochs
    # alphas.json: {kind: [[alpha per op] per mixed edge]}, the file `nasir draw --alphas` reads.
    alphas = json.loads((out / "alphas.json").read_text())
    assert alphas == json.loads((out / "alphas" / "epoch_002.json").read_text()) == reference.alphas
    assert {k: (len(v), len(v[0])) for k, v in alphas.items()} == {"normal": (14, 8), "reduce": (14, 8)}
    # derived.cell stands alone: it loads, has no choices, and keeps the searched network's parameters.
    derived = load(out / "derived.cell")
    assert not derived.is_search_space and derived.search is None
    assert "network digits(C = 4, layers = 3, classes = 10)" in (out / "derived.cell").read_text()
    assert all(len(c.in_edges(n)) == 2 for c in derived.cells for n in c.node_names)  # keep 2 inputs per node
    from nasir.genotype import spec_to_genotype

    assert (out / "genotype.txt").read_text().strip() == spec_to_genotype(derived) == reference.genotype


def test_derived_selection_is_the_top_alpha_per_edge_and_top_two_edges_per_node(reference):
    """Magnitude selection recomputed by hand from alphas.json (docs/methods.md, DARTS derivation)."""
    alphas = json.loads((reference.out / "alphas.json").read_text())
    derived = load(reference.out / "derived.cell")
    ops = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    states = ["c_k2", "c_k1", "n0", "n1", "n2", "n3"]
    for kind, rows in alphas.items():
        want, r = set(), 0
        for j in range(4):
            best = []
            for i in range(j + 2):
                soft = torch.tensor(rows[r]).softmax(0)
                k = int(soft[1:].argmax()) + 1  # `none` excluded
                best.append((float(soft[k]), states[i], ops[k]))
                r += 1
            want |= {(src, f"n{j}", op) for _, src, op in sorted(best, reverse=True)[:2]}
        got = {(e.src, e.dst, e.op) for e in derived.cell(kind).edges}
        assert got == want


def test_derived_network_exports_to_onnx_and_retrains(reference):
    import numpy as np
    import onnxruntime as ort

    from nasir.macro import plan
    from nasir.targets.network import build

    derived = load(reference.out / "derived.cell")
    model = build(derived, plan(derived), seed=0).eval()  # the search exports this seeded network
    x = torch.randn(3, 1, 8, 8)
    sess = ort.InferenceSession(str(reference.out / "derived.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"] and [o.name for o in sess.get_outputs()] == ["logits"]
    got = sess.run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    # Retraining: the derived network fits a fixed batch.
    model.train()
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    xb, yb = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_a_fixed_seed_gives_a_byte_identical_search(reference, tmp_path):
    again = search(SPEC, out=tmp_path, artifacts=False, **TINY)
    _same_result(reference.out, again.out)


def test_resume_after_a_stop_signal_mid_epoch_gives_the_same_result(reference, tmp_path):
    with pytest.raises(SearchInterrupted) as info:
        search(SPEC, out=tmp_path, artifacts=False, stop_after_steps=STEPS + 1, **TINY)
    assert (info.value.epoch, info.value.step) == (1, 1)  # mid-way through the second epoch
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)
    search(SPEC, out=tmp_path, artifacts=False, resume=True, **TINY)
    _same_result(reference.out, tmp_path)


def test_resume_after_a_kill_mid_epoch_gives_the_same_result(reference, tmp_path):
    def kill(info):
        if info["global_step"] == STEPS + 1:
            raise KeyboardInterrupt  # as abrupt as a kill: no checkpoint of this epoch is written

    with pytest.raises(KeyboardInterrupt) as info:
        search(SPEC, out=tmp_path, artifacts=False, callback=kill, **TINY)
    assert not isinstance(info.value, SearchInterrupted)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    search(SPEC, out=tmp_path, artifacts=False, resume=True, **TINY)
    _same_result(reference.out, tmp_path)


def test_search_block_gives_defaults_and_flags_override_them():
    spec = load(SPEC)
    opts = make_options(spec, data="digits", order=None, epochs=None, batch_size=None, seed=None, select=None,
                        overrides={}, limit_batches=None, channels_last=False, low_memory=False, device=torch.device("cpu"))  # fmt: skip
    text = (EXAMPLES / "digits.cell").read_text()
    assert f"order = {opts.order}" in text and f"epochs {opts.epochs}" in text and f"batch_size {opts.batch_size}" in text
    assert (opts.seed, opts.w_lr, opts.momentum, opts.w_weight_decay, opts.grad_clip) == (2, 0.025, 0.9, 3e-4, 5.0)
    assert (opts.w_lr_min, opts.a_lr, opts.a_betas, opts.a_weight_decay) == (0.001, 1e-2, (0.5, 0.999), 1e-3)
    flagged = make_options(spec, data="digits", order=2, epochs=3, batch_size=5, seed=9, select=None, overrides={},
                           limit_batches=None, channels_last=False, low_memory=False, device=torch.device("cpu"))  # fmt: skip
    assert (flagged.order, flagged.epochs, flagged.batch_size, flagged.seed) == (2, 3, 5, 9)


def test_second_order_search_runs(tmp_path):
    result = search(SPEC, out=tmp_path, artifacts=False, order=2, limit_batches=1, **{**TINY, "epochs": 1})
    assert len(result.metrics) == 1 and result.metrics[0]["steps"] == 1


def test_bad_input_is_a_diagnostic(reference, tmp_path):
    cases = [
        (dict(spec_or_path=EXAMPLES / "darts_v2.cell"), "has no choices to search"),
        (dict(data="cifar10:/no/such/folder"), "data path '/no/such/folder' does not exist"),
        (dict(data="imagenet"), "unknown data set 'imagenet'"),
        (dict(epochs=0), "epochs must be a whole number >= 1, got 0"),
        (dict(select="bogus"), "select must be one of magnitude, strength, strength_star, naive, got 'bogus'"),
        (dict(out=reference.out), "already holds a search"),
        (dict(out=reference.out, resume=True, seed=1), r"was made from something else: seed: 0 then, 1 now"),
        (dict(resume=True), "no checkpoint in"),
    ]
    for kw, message in cases:
        args = {**TINY, "out": tmp_path / "x", "artifacts": False, **kw}
        spec = args.pop("spec_or_path", SPEC)
        with pytest.raises(DiagnosticError, match=message):
            search(spec, **args)


def test_search_settings_of_an_example_are_honoured():
    text = (EXAMPLES / "nb201.cell").read_text().replace('include "ops.cell"', "opset nb201 = {none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3}")
    opts = make_options(spec_of(text), data="digits", order=None, epochs=None, batch_size=None, seed=None, select=None, overrides={},
                        limit_batches=None, channels_last=False, low_memory=False, device=torch.device("cpu"))  # fmt: skip
    assert (opts.method, opts.order, opts.select) == ("darts", 1, "strength")  # `select strength` in nb201.cell


def test_cli_prints_the_derived_cell_and_the_files(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="nasir")
    add_search_parser(parser.add_subparsers(dest="command"))
    argv = ["search", str(SPEC), "--data", "synthetic:32", "--set", "C=4", "--set", "layers=3", "--epochs", "1",
            "--batch-size", "8", "--limit-batches", "1", "--seed", "0", "--device", "cpu", "--order", "2",
            "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert run_search(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Derived by nasir search from digits.cell.\ncell normal {")
    assert "genotype: Genotype(normal=[" in out and f"files in {tmp_path / 'run'}/" in out and "  derived.onnx" in out
    with pytest.raises(SystemExit) as info:
        parser.parse_args([*argv, "--order", "3"])
    assert info.value.code == 2
    with pytest.raises(DiagnosticError, match="does not exist"):
        run_search(parser.parse_args([*argv, "--data", "folder:/no/such/folder", "--out", str(tmp_path / "run2")]))


# ---- the GPU path, simulated on the CPU (issue 17; docs/gpu.md) --------------------------------------
def _tiny_search(out, **kw):
    """A Search object for TINY's settings (no run), as search() builds it. `device`: the device the
    options are made for (its default layout); the Search itself runs on the CPU."""
    import attrs

    from nasir.lower import resolve
    from nasir.search.runner import Search

    spec, plan = resolve(SPEC, TINY["overrides"])
    opts = make_options(spec, data=TINY["data"], overrides={"C": 4, "layers": 3}, limit_batches=None,
                        channels_last=kw.pop("channels_last", None), low_memory=False,
                        device=kw.pop("device", torch.device("cpu")), epochs=TINY["epochs"], batch_size=TINY["batch_size"],
                        seed=TINY["seed"], **kw)  # fmt: skip
    return Search(spec, plan, attrs.evolve(opts, device="cpu"), out, progress=False, artifacts=False)


def test_resume_reads_the_checkpoint_on_the_cpu_and_moves_the_strength_history_to_the_device(tmp_path):
    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path, artifacts=False, stop_after_steps=1, select="strength", **TINY)
    run = _tiny_search(tmp_path, select="strength")
    run.device = torch.device("meta")  # stands for a GPU: a checkpoint mapped there would put the RNG states there too
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["rng"]["torch"]
    torch.manual_seed(12345)
    run.load()
    history = run.meter.state_dict()["history"]
    assert history and all(h.device.type == "meta" and h.shape[0] == 1 for h in history.values())  # one step recorded
    assert torch.equal(torch.get_rng_state(), saved)  # the CPU RNG was restored from the CPU-side state
    assert next(run.model.parameters()).device.type == "cpu"  # load_state_dict copies into the model where it is


def test_under_torchrun_the_search_takes_the_local_rank_gpu(monkeypatch, tmp_path):
    import nasir.search.runner as runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    seen = []

    class BuiltError(Exception):
        pass

    def capture(spec, plan, options, *a, **k):
        seen.append(options)
        raise BuiltError

    monkeypatch.setattr(runner, "Search", capture)
    with pytest.raises(BuiltError):
        search(SPEC, out=tmp_path, **{**TINY, "device": "auto"})
    assert seen[0].device == "cuda:1" and seen[0].channels_last is False and seen[0].layout == "auto"


def _with_gpu_rng_states(path, n: int) -> None:
    state = torch.load(path, weights_only=True)
    state["rng"]["cuda"] = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(n)]
    torch.save(state, path)


def test_a_checkpoint_with_more_gpu_rng_states_than_gpus_resumes_and_says_so(reference, tmp_path, monkeypatch):
    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path / "a", artifacts=False, stop_after_steps=STEPS + 1, **TINY)
    _with_gpu_rng_states(tmp_path / "a" / "checkpoint.pt", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # resumed on a machine without CUDA
    result = search(SPEC, out=tmp_path / "a", artifacts=False, resume=True, **TINY)
    assert any("CUDA RNG states of 2 GPU(s); there is no CUDA device now" in n for n in result.notes)
    _same_result(reference.out, tmp_path / "a")  # the GPU states played no part on the CPU

    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path / "b", artifacts=False, stop_after_steps=STEPS + 1, **TINY)
    _with_gpu_rng_states(tmp_path / "b" / "checkpoint.pt", 4)
    run, restored = _tiny_search(tmp_path / "b"), []
    with monkeypatch.context() as m:  # two GPUs now, four at save time (only while the state is restored)
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "device_count", lambda: 2)
        m.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((int(s[0]), d)))
        run.load()
    assert restored == [(1, 0), (2, 1)]
    assert any("CUDA RNG states of 4 GPU(s); restored 2 of them" in n for n in run.notes)


def test_a_search_saved_where_the_default_layout_differs_resumes_but_a_layout_the_user_changed_does_not(reference, tmp_path):
    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path, artifacts=False, stop_after_steps=STEPS + 1, **TINY)  # CPU: auto is channels-last
    run = _tiny_search(tmp_path, device=torch.device("cuda"))  # options as on a GPU, where auto means contiguous
    assert (run.opt.layout, run.opt.channels_last) == ("auto", False)
    result = run.run(resume=True)
    want = json.loads((reference.out / "alphas.json").read_text())
    for k in want:  # another memory layout: the same math up to rounding
        assert torch.allclose(torch.tensor(result.alphas[k]), torch.tensor(want[k]), atol=1e-6)
    with pytest.raises(DiagnosticError, match=r"layout \('auto' then, 'contiguous' now\)"):
        search(SPEC, out=tmp_path, artifacts=False, resume=True, channels_last=False, **TINY)


def test_a_search_saved_op_by_op_resumes_only_op_by_op_and_the_error_says_how(tmp_path):
    """Fusion became the default: a search saved op by op (fuse False in its options, or no `fuse` at all:
    saved before fusion existed) is refused by a plain --resume, with the flag that continues it."""
    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path, artifacts=False, stop_after_steps=STEPS + 1, fuse=False, **TINY)
    with pytest.raises(DiagnosticError, match=r"fuse \(False then, True now\)") as info:
        search(SPEC, out=tmp_path, artifacts=False, resume=True, **TINY)
    assert "--no-fuse" in str(info.value.diagnostics[0].hint)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["options"]["fuse"]  # as a checkpoint written before the option existed
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(DiagnosticError, match=r"fuse \(False then, True now\)"):
        search(SPEC, out=tmp_path, artifacts=False, resume=True, **TINY)
    result = search(SPEC, out=tmp_path, artifacts=False, resume=True, fuse=False, **TINY)
    assert result.out == tmp_path


def test_architecture_steps_run_without_tf32_and_metrics_name_the_setting(tmp_path, monkeypatch):
    import nasir.search.loop as runner  # the loop's module holds the weight step it calls
    from nasir.search.architect import Architect

    seen = {"arch": [], "weight": []}
    real_step, real_weight_step = Architect.step, runner.weight_step

    def arch_step(self, *a, **k):
        seen["arch"].append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real_step(self, *a, **k)

    def weight_step(*a, **k):
        seen["weight"].append(torch.backends.cudnn.allow_tf32)
        return real_weight_step(*a, **k)

    monkeypatch.setattr(Architect, "step", arch_step)
    monkeypatch.setattr(runner, "weight_step", weight_step)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default
    result = search(SPEC, out=tmp_path / "a", artifacts=False, **{**TINY, "epochs": 1})
    assert seen["arch"] == [(False, False)] * STEPS and seen["weight"] == [True] * STEPS
    assert torch.backends.cudnn.allow_tf32  # restored after each architecture step
    m = result.metrics[0]
    assert (m["fp32_arch_grads"], m["tf32_conv"], m["tf32_matmul"]) == (True, True, False)
    seen["arch"].clear()
    result = search(SPEC, out=tmp_path / "b", artifacts=False, fp32_arch_grads=False, **{**TINY, "epochs": 1})
    assert seen["arch"] == [(True, False)] * STEPS and result.metrics[0]["fp32_arch_grads"] is False


def test_deterministic_mode_holds_during_the_search_only_and_a_resumed_search_ends_with_the_same_alphas(tmp_path):
    during = []

    def probe(info):
        during.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic))

    whole = search(SPEC, out=tmp_path / "a", artifacts=False, deterministic=True, callback=probe, **TINY)
    assert during == [(True, True)] * (2 * STEPS)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert all(m["deterministic"] is True for m in whole.metrics)
    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path / "b", artifacts=False, deterministic=True, stop_after_steps=STEPS + 1, **TINY)
    resumed = search(SPEC, out=tmp_path / "b", artifacts=False, deterministic=True, resume=True, **TINY)
    assert resumed.alphas == whole.alphas
    _same_result(tmp_path / "a", tmp_path / "b")


class _EpochEndError(Exception):
    pass


@pytest.mark.parametrize("kw", [dict(), dict(select="strength"), dict(method="milenas"), dict(method="pcdarts", warmup=0)])
@pytest.mark.slow
def test_the_search_steps_never_wait_for_the_device(tmp_path, kw):
    """On `meta` every host read of a tensor (.item(), float(), .tolist(), bool()) raises, as a GPU would
    make it wait: an epoch's steps must run to the end, where the evaluation reads the numbers once."""
    run = _tiny_search(tmp_path, **kw)
    run.device = torch.device("meta")
    run.model.to("meta")

    def evaluate(indices):
        raise _EpochEndError

    run.evaluate = evaluate
    with pytest.raises(_EpochEndError):
        run.run()  # the runtime loop (nasir/runtime/fit.py) drives the first epoch to its evaluation
    assert run.step == run.steps == STEPS
    assert {k: v.device.type for k, v in run.partial.items() if isinstance(v, torch.Tensor)} == {
        "train_loss": "meta", "train_correct": "meta", "arch_loss": "meta"}  # fmt: skip


def test_cli_passes_the_gpu_flags_and_points_a_bad_device_at_the_flag(monkeypatch, capsys):
    import nasir.search.runner as runner
    from nasir.cli import main

    seen = {}

    class StopError(Exception):
        pass

    def capture(*a, **k):
        seen.update(k)
        raise StopError

    monkeypatch.setattr(runner, "search", capture)
    with pytest.raises(StopError):
        main(["--debug", "search", str(SPEC), "--device", "cuda:1", "--deterministic", "--no-fp32-arch-grads", "--no-progress",
              "--no-fuse"])  # fmt: skip
    assert (seen["device"], seen["deterministic"], seen["fp32_arch_grads"], seen["fuse"]) == ("cuda:1", True, False, False)
    with pytest.raises(StopError):
        main(["--debug", "search", str(SPEC), "--no-progress"])
    assert (seen["device"], seen["deterministic"], seen["fp32_arch_grads"], seen["fuse"]) == ("auto", False, True, True)
    monkeypatch.undo()
    assert main(["search", str(SPEC), "--device", "gpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "<command line>:1:" in err and "--device must be auto, cpu, cuda or cuda:N, got 'gpu'" in err


# ---- issue 14, runtime half: provenance, finite checks, failures before the first step, --out -----
def test_search_records_its_provenance_and_resume_refuses_another_seed_or_data(tmp_path):
    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path, stop_after_steps=1, **TINY)
    rec = json.loads((tmp_path / "provenance.json").read_text())
    from nasir.search.runner import CHECKPOINT
    from nasir.train import load_checkpoint

    assert load_checkpoint(tmp_path / CHECKPOINT)["provenance"] == rec
    assert rec["kind"] == "search" and rec["seed"] == 0 and rec["data"] == "synthetic:32"
    assert rec["overrides"] == {"C": "4", "layers": "3"} and rec["split"] == {"kind": "halves", "seed": 0}
    with pytest.raises(DiagnosticError, match="data: synthetic:32 then, synthetic:64 now"):
        search(SPEC, out=tmp_path, resume=True, **{**TINY, "data": "synthetic:64"})


def test_derived_onnx_records_its_seed_and_verify_export_passes_with_default_flags(reference, capsys):
    from nasir.cli import main
    from nasir.targets.export import read_metadata

    meta = read_metadata(reference.out / "derived.onnx")
    assert meta["nasir.seed"] == "0" and meta["nasir.weights"].startswith("untrained")
    code = main(["verify-export", str(reference.out / "derived.onnx"), "--spec", str(reference.out / "derived.cell")])
    out, err = capsys.readouterr()
    assert code == 0 and "seed 0 (recorded in" in out, (out, err)


def test_a_nan_architecture_loss_stops_the_search_naming_its_step_and_writes_nothing_derived(tmp_path, monkeypatch):
    """The 3rd architecture step (epoch 2, step 1) returns NaN; epoch 1's checkpoint stays, no derived.cell."""
    import nasir.search.loop as rn  # the loop's module holds the architect it builds

    real = rn.Architect.step
    calls = {"n": 0}

    def poisoned(self, *a, **kw):
        loss, logits = real(self, *a, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), logits

    monkeypatch.setattr(rn.Architect, "step", poisoned)
    from nasir.finite import NonFiniteError

    with pytest.raises(NonFiniteError) as e:
        search(SPEC, out=tmp_path, **TINY)
    message = e.value.diagnostics[0].message
    assert e.value.step == STEPS and f"the architecture loss is nan at epoch 2, step 1 (of {STEPS})" in message, message
    from nasir.search.runner import CHECKPOINT
    from nasir.train import load_checkpoint

    ck = load_checkpoint(tmp_path / CHECKPOINT)
    assert (ck["epoch"], ck["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "derived.cell").exists() and not (tmp_path / "derived.onnx").exists()


def test_topology_inputs_k_searches(tmp_path):
    """Issue 14, item 15: `topology inputs k` crashed every search (a regularizer without gradient)."""
    text = (EXAMPLES / "digits_stretchable.cell").read_text().replace("topology outputs any", "topology inputs 2")
    (tmp_path / "ops.cell").write_text((EXAMPLES / "ops.cell").read_text())
    (tmp_path / "s.cell").write_text(text)
    result = search(tmp_path / "s.cell", out=tmp_path / "out", artifacts=False, **{**TINY, "epochs": 1})
    derived = load(tmp_path / "out" / "derived.cell")
    assert all(len(c.in_edges(n)) == 2 for c in derived.cells for n in c.node_names)  # k = 2 inputs per node
    assert result.metrics[0]["arch_loss"] is not None


@pytest.mark.parametrize("case, message", [
    ("layers=2", "cell 'normal' is searchable but the network with C=4, layers=2, classes=10 stacks none of it"),
    ("small", "the input (1, 2, 2) is too small for the network's reductions: reduction 2 would get a 1x1 feature map"),
    ("aux", "a search space's network cannot have an auxiliary head"),
    ("budget", "budget cannot be met"),
])  # fmt: skip
def test_failures_known_before_the_first_step_are_reported_before_it_and_by_check(tmp_path, monkeypatch, case, message):
    text = SPEC.read_text()
    overrides = ["C=4", "layers=3"]
    if case == "layers=2":
        overrides = ["C=4", "layers=2"]
    elif case == "small":
        text = text.replace("input (1, 8, 8)", "input (1, 2, 2)")
    elif case == "aux":
        text = text.replace("  head ", "  auxiliary cifar at 2/3\n  head ")
    else:
        text = text.replace("  epochs 5", "  epochs 5\n  budget params <= 10")
    (tmp_path / "ops.cell").write_text((EXAMPLES / "ops.cell").read_text())
    (tmp_path / "s.cell").write_text(text)
    import nasir.search.loop as rn  # the loop's module holds the weight step it calls

    def no_step(*a, **kw):
        raise AssertionError("a step ran")

    monkeypatch.setattr(rn, "weight_step", no_step)
    import re

    with pytest.raises(DiagnosticError, match=re.escape(message)):
        search(tmp_path / "s.cell", out=tmp_path / "out", **{**TINY, "overrides": overrides})
    assert not (tmp_path / "out" / "checkpoint.pt").exists()
    if case != "budget":  # the cost of a network needs torch: `check` reports the spec-level ones
        from nasir.cli import main

        assert main(["check", str(tmp_path / "s.cell"), *[f"--set={o}" for o in overrides]]) == 2


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_search_out_that_is_a_file_is_a_diagnostic_before_any_work(tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    with pytest.raises(DiagnosticError, match=r"--out .*'.*f' is a file, not a directory"):
        search(SPEC, out=out, **TINY)


def test_stale_checkpoint_temporaries_are_removed_on_the_next_run(tmp_path):
    with pytest.raises(SearchInterrupted):
        search(SPEC, out=tmp_path, stop_after_steps=1, **TINY)
    stale = tmp_path / ".checkpoint.pt.k1ll3d.tmp"  # what a kill during the atomic write leaves
    stale.write_bytes(b"\0" * 1024)
    search(SPEC, out=tmp_path, resume=True, **TINY)
    assert not stale.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("flag, value", [("w_lr", float("inf")), ("w_weight_decay", float("inf")), ("a_lr", float("nan")),
                                         ("w_lr_min", float("inf"))])  # fmt: skip
def test_search_settings_must_be_finite(tmp_path, flag, value):
    with pytest.raises(DiagnosticError, match=r"must be .*got (inf|nan)"):
        search(SPEC, out=tmp_path, **{**TINY, flag: value})
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_alpha_table_gets_the_strengths_and_the_derived_picks(tmp_path, monkeypatch):
    """alphas.png is targets/draw.py's table: softmax(alpha) from alphas.json, the operation strengths as
    strengths.json holds them (OStr-DARTS Eq. 11), and the derived spec whose picks it frames."""
    import nasir.targets.draw as draw

    seen = {}
    real = draw.alphas_figure

    def spy(spec, alphas, path, strengths=None, derived=None):
        seen.update(alphas=alphas, strengths=strengths, derived=derived)
        return real(spec, alphas, path, strengths=strengths, derived=derived)

    monkeypatch.setattr(draw, "alphas_figure", spy)
    result = search(SPEC, out=tmp_path, **{**TINY, "epochs": 1}, select="strength")
    assert seen["alphas"] == json.loads((tmp_path / "alphas.json").read_text()) == result.alphas
    strengths = json.loads((tmp_path / "strengths.json").read_text())
    assert seen["strengths"] == strengths and {k: (len(v), len(v[0])) for k, v in strengths.items()} == {"normal": (14, 8), "reduce": (14, 8)}
    from nasir.printer import cell

    picks = [cell(c) for c in load(tmp_path / "derived.cell").cells]
    assert [cell(c) for c in seen["derived"].cells] == picks and "choice" not in "".join(picks)  # the picks derived.cell holds
    assert (tmp_path / "alphas.png").read_bytes()[:4] == b"\x89PNG"


def test_a_stop_at_the_last_step_of_an_epoch_finishes_that_epoch_then_resumes_to_the_same_result(reference, tmp_path):
    """fit's `finish_epoch_on_stop` (docs/runtime.md): stopping at step STEPS of epoch 1 evaluates, records and
    saves epoch 1 first (one metrics line, alphas/epoch_001.json), raises at (epoch 2, step 0), and the
    resumed search ends with the uninterrupted reference's files."""
    with pytest.raises(SearchInterrupted) as info:
        search(SPEC, out=tmp_path, artifacts=False, stop_after_steps=STEPS, **TINY)
    assert (info.value.epoch, info.value.step) == (1, 0)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert (tmp_path / "alphas" / "epoch_001.json").is_file() and not (tmp_path / "alphas" / "epoch_002.json").exists()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    search(SPEC, out=tmp_path, artifacts=False, resume=True, **TINY)
    _same_result(reference.out, tmp_path)
