"""Language-model training under torchrun: 2 gloo processes on the CPU split the batch's columns, keep
identical weights, equal to one process averaging the two halves' gradients (docs/recurrent.md)."""

import os
import subprocess
import sys

import attrs
import pytest
import torch
from torch import nn

from nasir.diagnostics import DiagnosticError
from nasir.rnn import corpus as corpus_mod
from nasir.rnn.architect import lm_loss
from nasir.rnn.cell import build
from nasir.rnn.search import sequence_length
from nasir.rnn.space import LanguageModel, parse_genotype

GENOTYPE = "Genotype(recurrent=[('tanh', 0), ('relu', 1), ('sigmoid', 1)], concat=range(1, 4))"
LM = dict(tokens=10, ninp=6, nhid=6, dropout=0.3, dropouth=0.2, dropoutx=0.3, dropouti=0.1, dropoute=0.1)
OPTS = dict(epochs=1, batch_size=8, eval_batch_size=10, test_batch_size=10, bptt=6, limit_batches=3, seed=5, lr=2.0)

RANK_SCRIPT = f"""
import os, sys, torch
torch.set_num_threads(1)
from nasir.rnn.space import LanguageModel, parse_genotype
from nasir.rnn.train import LMTrainer, TrainOptions
from nasir.rnn.search import RecurrentInterrupted
mode = sys.argv[2] if len(sys.argv) > 2 else "whole"
t = LMTrainer(parse_genotype({GENOTYPE!r})[1], LanguageModel(**{LM!r}), TrainOptions(**{OPTS!r}), sys.argv[1], device="cpu",
              stop_after_steps=2 if mode == "stop" else None)
try:
    t.run(resume=mode == "resume")
except RecurrentInterrupted:
    sys.exit(0)
assert (t.rank, t.world, t.train.size(1)) == (int(os.environ["RANK"]), 2, 4)
torch.save(t.model.state_dict(), os.path.join(sys.argv[1], "rank%s.pt" % os.environ["RANK"]))
"""


def reference(world: int = 2):
    """One process doing what DDP promises: per step the same length L on every rank, rank r's loss on its
    contiguous B / world columns with its own hidden state and its own dropout masks (torch seeded by
    (seed, r)), the gradients averaged, then clipped, then SGD with lr * L / bptt."""
    o = OPTS
    corpus = corpus_mod.load("embedded")
    lm = attrs.evolve(LanguageModel(**LM), tokens=corpus.tokens)
    torch.manual_seed(o["seed"])
    model = build(lm, parse_genotype(GENOTYPE)[1])
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=o["lr"], weight_decay=8e-7)
    rngs = []
    for r in range(world):
        torch.manual_seed(o["seed"] * 1_000_003 + r)
        rngs.append(torch.get_rng_state())
    n = o["batch_size"] // world
    data = corpus_mod.batchify(corpus.train, o["batch_size"])
    cols = [data[:, r * n : (r + 1) * n] for r in range(world)]
    hidden = [torch.zeros(n, lm.nhid) for _ in range(world)]
    gen = torch.Generator()
    gen.manual_seed(o["seed"] * 100003)
    pos = 0
    model.train()
    for _ in range(o["limit_batches"]):
        L = sequence_length(gen, o["bptt"])
        grads = []
        for r in range(world):
            torch.set_rng_state(rngs[r])
            batch = corpus_mod.get_batch(cols[r], pos, L)
            loss, _, h = lm_loss(model, batch, hidden[r], tar=1e-3)
            model.zero_grad()
            loss.backward()
            grads.append([p.grad.clone() for p in params])
            rngs[r], hidden[r] = torch.get_rng_state(), h.detach()
        for i, p in enumerate(params):
            p.grad = sum(g[i] for g in grads) / world
        nn.utils.clip_grad_norm_(params, 0.25)
        opt.param_groups[0]["lr"] = o["lr"] * batch[0].size(0) / o["bptt"]
        opt.step()
        pos += batch[0].size(0)
    return model.state_dict(), torch.cat(hidden)


@pytest.mark.slow
def test_two_gloo_processes_keep_equal_weights_equal_to_the_averaged_half_batch_step(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(tmp_path / "rank.py"), str(out)], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    ref, ref_hidden = reference()
    assert set(w0) == set(ref)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
        assert torch.allclose(w0[k], ref[k], atol=1e-6, rtol=0), (k, (w0[k] - ref[k]).abs().max())
    # the weights moved (a test of equal untrained weights would prove nothing)
    torch.manual_seed(OPTS["seed"])
    init = build(attrs.evolve(LanguageModel(**LM), tokens=76), parse_genotype(GENOTYPE)[1]).state_dict()
    assert (w0["cell.W0"] - init["cell.W0"]).abs().max() > 1e-4
    # one process (rank 0) wrote the checkpoint: both ranks' RNG states, all 8 columns' hidden state
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["world"] == 2 and len(ck["rng"]["ranks"]) == 2
    assert not torch.equal(ck["rng"]["ranks"][0]["torch"], ck["rng"]["ranks"][1]["torch"])  # own dropout streams
    assert ck["hidden"].shape == (8, 6) and torch.allclose(ck["hidden"], ref_hidden, atol=1e-6, rtol=0)
    assert [p.name for p in out.iterdir() if p.suffix == ".json"] == ["result.json"]

    # stopped after 2 of the 3 steps and resumed under 2 processes: the same weights and training perplexity
    again = tmp_path / "again"
    again.mkdir()
    for mode in ("stop", "resume"):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            str(tmp_path / "rank.py"), str(again), mode], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        if mode == "stop":
            assert torch.load(again / "checkpoint.pt", weights_only=True)["total_steps"] == 2
    resumed = torch.load(again / "rank0.pt", weights_only=True)
    for k in w0:
        assert torch.allclose(resumed[k], w0[k], atol=1e-7, rtol=0), k
    assert (again / "metrics.jsonl").read_text().split('"seconds"')[0] == (out / "metrics.jsonl").read_text().split('"seconds"')[0]


def test_a_device_that_is_not_there_is_a_flag_error_for_search_and_training(tmp_path):
    from nasir.rnn import api

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
    with pytest.raises(DiagnosticError, match="no CUDA device"):
        api.train(os.path.join(root, "darts_v2_rnn.cell"), "embedded", tmp_path / "t", overrides=["size=4"], device="cuda", epochs=1)
    with pytest.raises(DiagnosticError, match="no CUDA device"):
        api.search(os.path.join(root, "ptb.cell"), "embedded", tmp_path / "s", overrides=["size=4"], device="cuda", epochs=1)
    with pytest.raises(DiagnosticError, match="--device must be"):
        api.train(os.path.join(root, "darts_v2_rnn.cell"), "embedded", tmp_path / "t", overrides=["size=4"], device="tpu", epochs=1)


def test_resuming_another_runs_checkpoint_is_a_diagnostic(tmp_path):
    from nasir.rnn import api
    from nasir.rnn.search import RecurrentInterrupted

    cell = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "darts_v2_rnn.cell")
    kw = dict(overrides=["size=4"], epochs=1, batch_size=8, limit_batches=3, bptt=5, progress=False, device="cpu")
    with pytest.raises(RecurrentInterrupted):
        api.train(cell, "embedded", tmp_path, stop_after_steps=1, **kw)
    with pytest.raises(DiagnosticError, match="other settings"):
        api.train(cell, "embedded", tmp_path, resume=True, **{**kw, "lr": 1.0})
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save({**ck, "world": 2}, tmp_path / "checkpoint.pt")  # as 2 torchrun processes would have written it
    with pytest.raises(DiagnosticError, match="written by 2 process"):
        api.train(cell, "embedded", tmp_path, resume=True, **kw)
