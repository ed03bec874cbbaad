"""A distributed search: 2 gloo processes on the CPU keep identical weights and alphas, equal to one
process that averages the gradients of the two half-batches (what the math of data parallelism says)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import EXAMPLES

RANK_SCRIPT = """
import os, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from nasir.lower import resolve
from nasir.search.runner import Search, make_options
spec, plan = resolve(sys.argv[1], ["C=4", "layers=3"])
opts = make_options(spec, data="synthetic:32", overrides={"C": 4, "layers": 3}, limit_batches=None, channels_last=None,
                    low_memory=False, device=torch.device("cpu"), epochs=1, batch_size=8, seed=0, select=sys.argv[3],
                    a_lr=3e-4)  # DARTS' rate, which _emulate uses (examples/digits.cell sets arch_lr 1e-2)
run = Search(spec, plan, opts, Path(sys.argv[2]), progress=False, artifacts=False)
run.run()
torch.save(run.model.state_dict(), os.path.join(sys.argv[2], "rank%s.pt" % os.environ["RANK"]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _emulate(select: str) -> dict[str, torch.Tensor]:
    """One process: each step averages the gradients of the two half-batches (arch step, then weight step)."""
    from nasir.data import classification as data_mod
    from nasir.lower import resolve
    from nasir.search.supernet import build_supernet, prepare

    spec, plan = resolve(EXAMPLES / "digits.cell", ["C=4", "layers=3"])
    model = build_supernet(prepare(spec), plan, seed=0, channels_last=True)
    data = data_mod.load_data("synthetic:32", plan.input, plan.classes)
    w_idx, a_idx = data_mod.split_halves(len(data), 0)
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    orders = [data_mod.epoch_order(idx, 0, 0, s) for s, idx in enumerate((w_idx, a_idx))]
    model.train()

    def mean_grad(stream: int, step: int, params) -> list[torch.Tensor]:
        x, y = data.batch(orders[stream][step * 8 : (step + 1) * 8], data_mod.batch_generator(0, 0, step, stream))
        halves = [torch.autograd.grad(F.cross_entropy(model(x[h : h + 4]), y[h : h + 4]), params) for h in (0, 4)]
        return [(a + b) / 2 for a, b in zip(*halves)]

    for step in range(2):
        alphas = model.arch_parameters()
        for a, g in zip(alphas, mean_grad(1, step, alphas)):
            a.grad = g
        a_opt.step()
        weights = model.weight_parameters()
        for w, g in zip(weights, mean_grad(0, step, weights)):
            w.grad = g
        torch.nn.utils.clip_grad_norm_(weights, 5.0)
        w_opt.step()
    return model.state_dict()


@pytest.mark.slow
def test_two_gloo_processes_keep_alphas_and_weights_identical_and_equal_to_the_averaged_step(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(_free_port()), str(tmp_path / "rank.py"), str(EXAMPLES / "digits.cell"), str(out), "strength"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s0 = torch.load(out / "rank0.pt", weights_only=True)
    s1 = torch.load(out / "rank1.pt", weights_only=True)
    ref = _emulate("strength")
    learned = [k for k in s0 if "running" not in k and "num_batches" not in k]  # BN statistics stay per rank
    assert any(k.startswith("alphas.") for k in learned) and len(learned) > 50
    for k in learned:
        assert torch.equal(s0[k], s1[k]), k
        assert torch.allclose(s0[k], ref[k], atol=1e-6, rtol=1e-5), k
    # Rank 0 alone wrote the outputs; the strengths it selected by are the averaged gradients' too.
    assert (out / "derived.cell").is_file() and (out / "strengths.json").is_file()


STOP_SCRIPT = """
import json, os, signal, sys, torch
from pathlib import Path
torch.set_num_threads(1)
from nasir.lower import resolve
from nasir.search.runner import Search, SearchInterrupted, make_options
spec, plan = resolve(sys.argv[1], ["C=4", "layers=3"])
rank, out = int(os.environ["RANK"]), Path(sys.argv[2])

def run(name, **kw):
    opts = make_options(spec, data="synthetic:32", overrides={"C": 4, "layers": 3}, limit_batches=None, channels_last=None,
                        low_memory=False, device=torch.device("cpu"), epochs=2, batch_size=8, seed=0, select="strength")
    return Search(spec, plan, opts, out / name, progress=False, artifacts=False, **kw)

whole = run("whole").run()

def ctrl_c(info):  # rank 1 only, mid-epoch: the terminal's SIGINT, then the copy torchrun's agent forwards
    if rank == 1 and info["global_step"] == 1:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

stopped = None
try:
    run("cut", callback=ctrl_c).run()
except SearchInterrupted as e:
    stopped = [e.epoch, e.step]
saved = torch.load(out / "cut" / "checkpoint.pt", weights_only=True) if rank == 0 else None
resumed = run("cut").run(resume=True)
(out / ("rank%d.json" % rank)).write_text(json.dumps({
    "stopped": stopped, "same_alphas": resumed.alphas == whole.alphas,
    "saved_at": None if saved is None else [saved["epoch"], saved["step"]],
    "rng_ranks": None if saved is None else len(saved["rng"]["ranks"])}))
"""


@pytest.mark.slow
def test_a_sigint_to_one_rank_mid_epoch_stops_both_at_the_same_step_and_resume_gives_the_same_alphas(tmp_path):
    """Under torchrun a worker gets Ctrl-C twice (the terminal's and the agent's copy); only rank 1 gets it
    here. Both ranks must agree on the stop step (else one waits forever in an all-reduce), checkpoint
    there, and the resumed pair end where a pair that never stopped ends."""
    import json

    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "stop.py").write_text(STOP_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(_free_port()), str(tmp_path / "stop.py"), str(EXAMPLES / "digits.cell"), str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert res[0]["stopped"] == res[1]["stopped"] == [0, 1]  # epoch 1, after its first of two steps
    assert res[0]["saved_at"] == [0, 1] and res[0]["rng_ranks"] == 2  # one checkpoint, both ranks' RNG states
    assert res[0]["same_alphas"] and res[1]["same_alphas"]
