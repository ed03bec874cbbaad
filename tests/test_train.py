"""Retraining: learning happens, resume equals not stopping, DARTS' cutout and schedules, DDP math."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from helpers import spec_of

from nasir.diagnostics import DiagnosticError
from nasir.train import PRESETS, TrainConfig, cutout, load_checkpoint, lr_at, train

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
network tiny(C = 4, layers = 3, classes = 4, auxiliary = false) {
  input (1, 8, 8)
  stem conv3x3(3 * C), bn
  stack layers cells(C): normal, reduce at 1/3, 2/3
  auxiliary cifar at 2/3 if auxiliary
  head global_avg_pool, linear(classes)
}
"""


def cfg(**kw):
    base = dict(epochs=3, batch_size=32, lr=0.05, limit_batches=4, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_the_synthetic_classes(tmp_path):
    last = train(spec_of(TINY), "synthetic:256", tmp_path, cfg(epochs=4, limit_batches=None), progress=False)
    assert last["valid_acc"] > 0.6  # 4 classes: chance is 0.25
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path):
    spec = spec_of(TINY)
    train(spec, "synthetic:128", tmp_path / "a", cfg(), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False, stop_after_steps=6)  # mid epoch 2
    train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False, resume=True)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_of_an_amp_run_restores_the_grad_scaler_and_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """AMP on the CPU (bfloat16 autocast, torch.amp.GradScaler("cpu")) with a scaler that doubles its
    scale after every step: the scale is state that only last.pt can carry across the interruption."""
    import json

    import nasir.device as dv

    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: real(device, init_scale=2.0, growth_interval=1, enabled=enabled))
    monkeypatch.setattr(dv, "peak_memory_mb", lambda device: 12.5)  # as on a GPU: the epoch's peak goes to metrics.jsonl
    spec = spec_of(TINY)
    train(spec, "synthetic:128", tmp_path / "a", cfg(), progress=False, amp=True)
    with pytest.raises(KeyboardInterrupt):
        train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False, stop_after_steps=6, amp=True)
    train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False, resume=True, amp=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    # 3 epochs x 4 steps, no overflow in fp32 gradients: 2 * 2**12 (by hand), in both runs.
    assert a["scaler"]["scale"] == b["scaler"]["scale"] == 2.0**13
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rec = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["amp_scale"] for r in rec] == [2.0**5, 2.0**9, 2.0**13] and all(r["gpu_peak_mb"] == 12.5 for r in rec)
    # An AMP checkpoint does not resume without AMP (nor the other way): a diagnostic, not a silent change.
    with pytest.raises(DiagnosticError, match="mixed precision was on then, off now"):
        train(spec, "synthetic:128", tmp_path / "b", cfg(epochs=4), progress=False, resume=True, amp=False)


def test_a_sigint_mid_epoch_saves_last_pt_at_the_step_boundary_and_resume_equals_not_stopping(tmp_path, monkeypatch):
    import signal

    from nasir.data import classification as data_mod
    from nasir.train import TrainInterrupted

    spec = spec_of(TINY)
    train(spec, "synthetic:128", tmp_path / "a", cfg(), progress=False)
    real, calls = data_mod.batch_generator, []

    def generator_then_signal(*a):
        calls.append(a)
        if len(calls) == 6:  # the second step of epoch 2 is about to run: Ctrl-C (twice, as under torchrun)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a)

    monkeypatch.setattr(data_mod, "batch_generator", generator_then_signal)
    with pytest.raises(TrainInterrupted) as info:
        train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False)
    assert (info.value.epoch, info.value.step) == (1, 2)  # the step that was running finished first
    assert load_checkpoint(tmp_path / "b" / "last.pt")["state"]["step"] == 2
    monkeypatch.setattr(data_mod, "batch_generator", real)
    train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False, resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_deterministic_mode_is_recorded_undone_after_the_run_and_changes_no_result_on_the_cpu(tmp_path):
    import json

    spec = spec_of(TINY)
    a = train(spec, "synthetic:128", tmp_path / "a", cfg(epochs=1, limit_batches=2), progress=False)
    b = train(spec, "synthetic:128", tmp_path / "b", cfg(epochs=1, limit_batches=2), progress=False, deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text())["deterministic"] is True
    assert "deterministic" not in json.loads((tmp_path / "a" / "metrics.jsonl").read_text())
    # The head's mean over H, W (nasir.device.GlobalAvgPool) stands in for adaptive pooling: same numbers.
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    wa, wb = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)


def test_cutout_zeroes_one_square_of_the_given_size():
    x = torch.ones(64, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    y = cutout(x, 16, g)
    g = torch.Generator().manual_seed(0)
    cy, cx = torch.randint(0, 32, (64,), generator=g), torch.randint(0, 32, (64,), generator=g)
    for i in range(64):
        # Hand rule: rows max(0, cy-8) .. min(32, cy+8) - 1, the same for columns.
        rows = min(32, int(cy[i]) + 8) - max(0, int(cy[i]) - 8)
        cols = min(32, int(cx[i]) + 8) - max(0, int(cx[i]) - 8)
        assert int((y[i] == 0).sum()) == rows * cols


def test_schedules_follow_darts():
    c = TrainConfig(epochs=600, lr=0.025, lr_min=0.0, schedule="cosine")
    assert lr_at(c, 0) == pytest.approx(0.025) and lr_at(c, 300) == pytest.approx(0.0125) and lr_at(c, 600) == pytest.approx(0.0)
    e = TrainConfig(lr=0.1, schedule="exponential", gamma=0.97)
    assert lr_at(e, 10) == pytest.approx(0.1 * 0.97**10)


def test_presets_hold_the_darts_protocol():
    p = TrainConfig.from_preset("darts-cifar")
    assert (p.epochs, p.batch_size, p.lr, p.momentum, p.weight_decay, p.cutout, p.drop_path, p.auxiliary_weight, p.grad_clip) == (
        600, 96, 0.025, 0.9, 3e-4, 16, 0.2, 0.4, 5.0)  # fmt: skip
    assert "C=36" in p.set and "layers=20" in p.set
    assert TrainConfig.from_preset("darts-imagenet").label_smoothing == 0.1
    assert TrainConfig.from_preset("darts-cifar", epochs=5).epochs == 5
    with pytest.raises(DiagnosticError, match="unknown preset"):
        TrainConfig.from_preset("darts-cifr")
    assert set(PRESETS) == {"darts-cifar", "darts-imagenet", "digits", "detection"}


def test_corrupt_checkpoint_is_a_diagnostic(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DiagnosticError, match="not a readable nasir checkpoint"):
        load_checkpoint(bad)


# ---- DistributedDataParallel on the CPU (gloo) ----------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RANK_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
from nasir.api import load
from nasir.train import TrainConfig, train
import nasir.train as tr
spec = load(sys.argv[1])
out = sys.argv[2]
train(spec, "synthetic:128", out, TrainConfig(epochs=1, batch_size=32, lr=0.05, limit_batches=3, seed=3),
      device="cpu", progress=False)
torch.save(tr._LAST_MODEL_STATE, os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
"""


@pytest.mark.slow
def test_two_gloo_processes_agree_and_match_the_averaged_single_process_step(tmp_path):
    import subprocess
    import sys

    out = str(tmp_path / "ddp")
    os.makedirs(out)
    (tmp_path / "t.cell").write_text(TINY)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
                        str(tmp_path / "rank.py"), str(tmp_path / "t.cell"), out], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # last.pt holds both ranks' RNG states (each rank's GPU generator, on GPUs), not only rank 0's.
    rng = load_checkpoint(os.path.join(out, "last.pt"))["rng"]
    assert len(rng["ranks"]) == 2 and torch.equal(rng["ranks"][0]["torch"], rng["torch"])
    w0 = torch.load(os.path.join(out, "rank0.pt"), weights_only=True)
    w1 = torch.load(os.path.join(out, "rank1.pt"), weights_only=True)
    for k in w0:
        if k.endswith("running_mean") or k.endswith("running_var") or k.endswith("num_batches_tracked"):
            continue  # DDP broadcasts buffers from rank 0 at the next forward, not after the last step
        assert torch.equal(w0[k], w1[k]), k

    # The math DDP promises: each step averages the gradients of the two half-batches (each half
    # normalised by its own BN statistics), with BN buffers taken from rank 0. Emulate it in one process.
    from nasir.data import classification as data_mod
    from nasir.macro import plan as make_plan
    from nasir.targets.network import Network
    from nasir.train import _eval_data, lr_at

    spec = spec_of(TINY)
    p = make_plan(spec)
    c = cfg(epochs=1, limit_batches=3)
    torch.manual_seed(c.seed)
    model = Network(spec, p)
    raw = data_mod.load_data("synthetic:128", p.input, p.classes)
    data, train_idx, _, _ = _eval_data("synthetic:128", raw, c.holdout, c.seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr_at(c, 0), momentum=c.momentum, weight_decay=c.weight_decay)
    order = data_mod.epoch_order(train_idx, c.seed, 0, 0)
    model.train()
    for step in range(3):
        idx = order[step * c.batch_size : (step + 1) * c.batch_size]
        halves = [idx[: c.batch_size // 2], idx[c.batch_size // 2 :]]
        buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
        grads = []
        for r in (1, 0):  # rank 1 first, then restore buffers and run rank 0 (whose buffers DDP keeps)
            model.load_state_dict({**model.state_dict(), **buffers})
            x, y = data.batch(halves[r], data_mod.batch_generator(c.seed, 0, step, r))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads.append([q.grad.clone() for q in model.parameters()])
        for q, g1, g0 in zip(model.parameters(), *grads):
            q.grad = (g0 + g1) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()
    ref = model.state_dict()
    for k in w0:
        if "running" in k or "num_batches" in k:
            continue
        assert torch.allclose(w0[k], ref[k], atol=1e-6, rtol=1e-5), k
    assert not math.isnan(float(sum(v.float().sum() for v in w0.values())))


# ---- issue 11: the two drifts between search and training ----------------------------------------------
def test_evaluation_does_not_augment(monkeypatch):
    """nasir.train.evaluate on a set that augments (CIFAR-style crop and flip) scores the images as they
    are, as the search's evaluation does: against cross-entropy and accuracy computed by hand on the raw tensors."""
    from nasir.data import classification as data_mod
    from nasir.train import evaluate

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, 8, 8, generator=g), torch.randint(0, 4, (20,), generator=g)
    data = data_mod.Data("aug", 4, (3, 8, 8), x, y, augment=True)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))  # position-sensitive: a crop moves it
    idx = torch.arange(3, 20)
    loss, acc = evaluate(model, data, idx, torch.device("cpu"), batch=5)
    with torch.no_grad():
        logits = model(x[idx])
    assert loss == pytest.approx(float(F.cross_entropy(logits.double(), y[idx], reduction="mean")), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == y[idx]).double().mean()))
    # and the augmentation would have changed the number (else the test could not fail)
    xa, _ = data.batch(idx, torch.Generator().manual_seed(5), train=True)
    assert not torch.equal(xa, x[idx])


def test_a_kill_between_the_metrics_line_and_the_checkpoint_does_not_duplicate_the_line(tmp_path, monkeypatch):
    """Simulated kill: last.pt's save at the end of epoch 2 dies after that epoch's metrics line was written.
    The resumed run's metrics.jsonl has one line per epoch, equal to an uninterrupted run's (but for the times)."""
    import nasir.runtime.fit as tr  # the loop saves last.pt through save_last

    spec = spec_of(TINY)
    train(spec, "synthetic:128", tmp_path / "a", cfg(), progress=False)
    real_save, calls = tr.save_last, []

    def dying_save(out, task, opt, scaler, state, sums, d):
        calls.append(dict(state))
        if state["epoch"] == 2 and state["step"] == 0:
            raise SystemExit("killed")  # after metrics.jsonl got epoch 2's line, before last.pt records it
        real_save(out, task, opt, scaler, state, sums, d)

    monkeypatch.setattr(tr, "save_last", dying_save)
    with pytest.raises(SystemExit):
        train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2  # the line the kill orphaned
    monkeypatch.setattr(tr, "save_last", real_save)
    train(spec, "synthetic:128", tmp_path / "b", cfg(), progress=False, resume=True)

    def lines(p):
        return [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in (p / "metrics.jsonl").read_text().splitlines()]

    a, b = lines(tmp_path / "a"), lines(tmp_path / "b")
    assert [r["epoch"] for r in b] == [1, 2, 3]
    assert b == a
