"""nasir.device: device choice, CPU-side checkpoint loading, RNG save/restore (fewer GPUs, every DDP rank),
the stop flag's agreement across ranks, TF32 and deterministic settings. No GPU here: CUDA is simulated by
monkeypatching torch.cuda's functions, and moves are checked on the `meta` device."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from nasir import device as dv
from nasir.diagnostics import DiagnosticError


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as on a machine with `n` GPUs: availability, count, current device, and recorders."""
    calls: dict[str, list] = {"set_device": [], "set_rng_state": []}

    def install(n: int = 2):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(d))
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d="cuda": calls["set_rng_state"].append((s, d)))
        return calls

    for k in ("WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    return install


# ---- select_device ---------------------------------------------------------------------------------
def test_auto_is_the_cpu_without_cuda_and_cuda_without_a_gpu_is_a_flag_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dv.select_device("auto") == torch.device("cpu")
    assert dv.select_device("cpu") == torch.device("cpu")
    with pytest.raises(DiagnosticError, match=r"error: --device cuda: no CUDA device"):
        dv.select_device("cuda")
    with pytest.raises(DiagnosticError, match="--device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        dv.select_device("gpu")


def test_under_torchrun_each_worker_takes_its_local_rank_gpu(fake_cuda, monkeypatch):
    calls = fake_cuda(4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dv.select_device("auto") == torch.device("cuda", 3)
    assert dv.select_device("cuda") == torch.device("cuda", 3)
    assert calls["set_device"] == [3, 3]  # the worker's GPU is the current one for index-less CUDA calls
    assert dv.select_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins


def test_a_local_rank_beyond_the_visible_gpus_is_a_flag_error(fake_cuda, monkeypatch):
    fake_cuda(2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(DiagnosticError, match="LOCAL_RANK is 2, but 2 CUDA device"):
        dv.select_device("cuda")
    with pytest.raises(DiagnosticError, match="cuda:N, got 'cuda:x'"):
        dv.select_device("cuda:x")


def test_a_single_process_uses_the_current_gpu(fake_cuda):
    calls = fake_cuda(2)
    assert dv.select_device("auto") == torch.device("cuda", 0) and calls["set_device"] == [0]


# ---- checkpoints ------------------------------------------------------------------------------------
def test_checkpoints_load_on_the_cpu_and_move_to_moves_every_nested_tensor(tmp_path):
    ck = {"model": {"w": torch.ones(2)}, "rng": {"numpy": {"keys": torch.arange(3), "pos": 4}}, "hist": [torch.zeros(1), (torch.ones(1), "x")]}
    torch.save(ck, tmp_path / "c.pt")
    back = dv.load_on_cpu(tmp_path / "c.pt")
    assert back["rng"]["numpy"]["keys"].device.type == "cpu"
    moved = dv.move_to(back, "meta")
    assert moved["model"]["w"].device.type == "meta" and moved["hist"][0].device.type == "meta"
    assert moved["hist"][1][0].device.type == "meta" and moved["hist"][1][1] == "x" and moved["rng"]["numpy"]["pos"] == 4
    assert back["model"]["w"].device.type == "cpu"  # the input is not changed


# ---- RNG ----------------------------------------------------------------------------------------------
def _draws() -> tuple[float, float, float]:
    return float(torch.rand(1)), float(np.random.rand()), random.random()


def test_rng_round_trip_restores_torch_numpy_and_python(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    _draws()
    state = dv.rng_state()
    torch.save(state, tmp_path / "r.pt")
    want = _draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    assert dv.restore_rng(dv.load_on_cpu(tmp_path / "r.pt")) == []
    assert _draws() == want


def test_fewer_gpus_than_saved_restores_the_ones_there_and_says_so(fake_cuda):
    calls = fake_cuda(1)
    state = dv._local_rng_state()  # captured with the real (absent) CUDA: add two saved GPU states
    state["cuda"] = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    notes = dv.restore_rng(state)
    assert [(int(s[0]), d) for s, d in calls["set_rng_state"]] == [(1, 0)]  # GPU 0 only; GPU 1 is not there
    assert len(notes) == 1 and "2 GPU(s); restored 1 of them" in notes[0]


def test_a_gpu_checkpoint_resumes_on_the_cpu_with_a_note(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = dv._local_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    notes = dv.restore_rng(state)
    assert len(notes) == 1 and "there is no CUDA device now" in notes[0]


# ---- stop flag ------------------------------------------------------------------------------------------
def test_a_second_signal_stops_at_once_only_after_the_grace_period_and_never_under_torchrun(monkeypatch):
    for k in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    f = dv.StopFlag(grace_s=60.0)
    f.handler(signal.SIGINT, None)
    f.handler(signal.SIGINT, None)  # a duplicate within the grace period: still a clean stop
    assert f.requested and f.agreed()
    f = dv.StopFlag(grace_s=0.0)
    f.handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        f.handler(signal.SIGINT, None)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    f = dv.StopFlag(grace_s=0.0)
    f.handler(signal.SIGINT, None)
    f.handler(signal.SIGINT, None)  # the agent's forwarded copy
    assert f.requested


def test_installed_handler_catches_a_real_sigint_and_restores_the_old_one():
    before = signal.getsignal(signal.SIGINT)
    f = dv.StopFlag()
    with f.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert f.requested
    assert signal.getsignal(signal.SIGINT) is before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RANKS_SCRIPT = """
import json, os, signal, sys, torch
torch.set_num_threads(1)
import torch.distributed as dist
from nasir import device as dv
dist.init_process_group("gloo")
rank = dist.get_rank()
out = sys.argv[1]
# RNG: every rank's state reaches the saving rank, and each rank gets its own back.
torch.manual_seed(100 + rank)
state = dv.rng_state()
want = float(torch.rand(1))
if rank == 0:
    torch.save(state, os.path.join(out, "rng.pt"))
dist.barrier()
torch.manual_seed(7)
notes = dv.restore_rng(dv.load_on_cpu(os.path.join(out, "rng.pt")))
got = float(torch.rand(1))
# Stop: rank 1 gets two SIGINTs (the terminal's and the agent's) at step 3; rank 0 none.
flag = dv.StopFlag(grace_s=0.0)
stopped = None
with flag.installed():
    for step in range(1, 50):
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        if flag.agreed():
            stopped = step
            break
with open(os.path.join(out, "rank%d.json" % rank), "w") as f:
    json.dump({"want": want, "got": got, "stopped": stopped, "notes": notes, "ranks": len(state["ranks"])}, f)
dist.barrier()
dist.destroy_process_group()  # exiting with a live gloo group can abort the process ("terminate called ...")
# Under load, gloo's own teardown at interpreter exit still aborted rank 0 now and then ("terminate called
# without an active exception", after everything above had run): leave without C++ static destructors.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def test_two_gloo_ranks_save_each_ranks_rng_and_stop_at_the_same_step(tmp_path):
    (tmp_path / "ranks.py").write_text(RANKS_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(_free_port()), str(tmp_path / "ranks.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # Independent: the first draw after manual_seed(100 + rank), computed here.
        first = float(torch.rand(1, generator=torch.Generator().manual_seed(100 + rank)))
        assert res["got"] == res["want"] == first
        assert res["stopped"] == 3 and res["notes"] == [] and res["ranks"] == 2


# ---- numerics ---------------------------------------------------------------------------------------------
def test_fp32_arch_grads_turns_tf32_off_in_the_block_and_restores_it_after_an_error():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with pytest.raises(RuntimeError), dv.fp32_arch_grads():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert dv.precision_record(True) == {"fp32_arch_grads": True, "tf32_conv": False, "tf32_matmul": False}
            raise RuntimeError
        assert torch.backends.cudnn.allow_tf32
        with dv.fp32_arch_grads(enabled=False):
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_deterministic_mode_sets_cudnn_algorithms_and_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        torch.backends.cudnn.benchmark = True
        rec = dv.deterministic(True)
        assert rec == {"deterministic": True, "cublas_workspace": ":4096:8"}
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert dv.fixed_shapes(torch.device("cuda", 0)) is False  # no autotuning in the deterministic mode
    finally:
        dv.deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    try:
        assert dv.fixed_shapes(torch.device("cuda", 0)) is True and torch.backends.cudnn.benchmark
        assert dv.fixed_shapes(torch.device("cpu")) is False and not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = False


def test_deterministic_pooling_swaps_global_adaptive_pooling_for_the_mean_with_the_same_output():
    from helpers import EXAMPLES

    from nasir.lower import build

    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d(2)), nn.Flatten())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = model(x)
    assert dv.deterministic_pooling(model) == 1  # output size 2 is not a global mean: kept
    assert isinstance(model[1][0], dv.GlobalAvgPool) and isinstance(model[1][1], nn.AdaptiveAvgPool2d)
    torch.testing.assert_close(model(x), ref)
    # A nasir network's head: the same state_dict keys, the same logits.
    net = build(EXAMPLES / "darts_v2.cell", overrides=["C=4", "layers=3"]).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keys, ref = list(net.state_dict()), net(x)
    assert dv.deterministic_pooling(net) == 1
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), ref, atol=1e-6, rtol=1e-5)


def test_peak_memory_is_none_on_the_cpu_and_mib_on_cuda(monkeypatch):
    assert dv.peak_memory_mb(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 3 * 2**20 + 2**19)
    assert dv.peak_memory_mb(torch.device("cuda", 0)) == 3.5


def test_loader_workers_none_on_the_cpu_and_up_to_four_per_gpu_process(monkeypatch):
    assert dv.loader_workers(torch.device("cpu")) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert dv.loader_workers(torch.device("cuda", 0), world=1) == 4
    assert dv.loader_workers(torch.device("cuda", 0), world=8) == 1  # 2 cores each: one for the main process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert dv.loader_workers(torch.device("cuda", 0)) == 0


def test_to_device_pins_host_batches_for_cuda(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    x = torch.ones(2, 3)
    assert dv.to_device(x, torch.device("cpu")) is x and pinned == []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: (device, non_blocking))
    assert dv.to_device(x, torch.device("cuda", 0)) == (torch.device("cuda", 0), True) and pinned == [(2, 3)]
