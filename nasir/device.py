"""Where a run executes and what it takes to run, stop, resume and reproduce there (CPU or CUDA).

Search (`nasir.search.runner`) and training (`nasir.train`) share these pieces; docs/gpu.md says
what each promises on a GPU.

- `select_device`: the one device-selection function (auto | cpu | cuda | cuda:N); under torchrun a
  CUDA run takes this process's GPU, LOCAL_RANK.
- `load_on_cpu` / `move_to`: checkpoints are read onto the CPU (so RNG states and numpy keys stay
  there) and the tensors that belong on the device are moved explicitly.
- `rng_state` / `restore_rng`: torch (CPU and every visible GPU), numpy and Python RNG states; under
  DDP every rank's, gathered to the rank that saves. Restoring onto fewer GPUs (or none) restores
  what exists and returns a note that says what was left out.
- `StopFlag`: SIGINT/SIGTERM ask for a stop at the next step boundary; all ranks agree on that step
  (an all-reduce of the flag, on the CPU), so the run checkpoints once and no rank waits forever.
- `fp32_arch_grads`: TF32 off for a block (the search's architecture gradients).
- `deterministic` / `fixed_shapes`: the deterministic mode, and cuDNN autotuning for fixed-shape loops.
- `peak_memory_mb` / `reset_peak_memory`: the GPU's peak allocated memory for metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasir.diagnostics import Diagnostic, DiagnosticError


def _flag_error(message: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([Diagnostic(message, None, hint)])


# ---- the device ------------------------------------------------------------------------------------
def under_torchrun() -> bool:
    """Started by torchrun (or another torch.distributed launcher): it sets these for every worker."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def select_device(device: str | torch.device = "auto") -> torch.device:
    """`--device` as a torch.device: auto (CUDA when present), cpu, cuda or cuda:N.

    A CUDA device without an index is this process's GPU: LOCAL_RANK under torchrun (one GPU per
    worker), else the current device. That GPU becomes the current device, so kernels, NCCL and
    `torch.cuda` calls without an index use it. Bad values and missing GPUs are flag errors.
    """
    text = str(device)
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if text != "auto" and text != "cuda" and not text.startswith("cuda:"):
        raise _flag_error(f"--device must be auto, cpu, cuda or cuda:N, got '{text}'")
    if not torch.cuda.is_available():
        raise _flag_error(f"--device {text}: no CUDA device is available", "use --device cpu or --device auto")
    count = torch.cuda.device_count()
    if text.startswith("cuda:"):
        index_text = text[5:]
        if not index_text.isdigit():
            raise _flag_error(f"--device must be auto, cpu, cuda or cuda:N, got '{text}'")
        index = int(index_text)
    elif "LOCAL_RANK" in os.environ:
        index = int(os.environ["LOCAL_RANK"])
    else:
        index = torch.cuda.current_device()
    if index >= count:
        why = f"LOCAL_RANK is {index}" if text in ("auto", "cuda") else f"--device {text}"
        raise _flag_error(f"--device {text}: {why}, but {count} CUDA device(s) are visible",
                          "start at most one process per visible GPU (torchrun --nproc-per-node), or set CUDA_VISIBLE_DEVICES")  # fmt: skip
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


# ---- checkpoints -------------------------------------------------------------------------------------
def load_on_cpu(path: str | Path) -> Any:
    """A checkpoint read onto the CPU (weights only). Its RNG states must stay there; `move_to` or
    `load_state_dict` put model and optimiser state where the model lives."""
    return torch.load(path, map_location="cpu", weights_only=True)


def move_to(obj: Any, device: torch.device | str) -> Any:
    """Every tensor in nested dicts, lists and tuples moved to `device` (other values unchanged)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`: on CUDA through pinned memory, so the copy runs asynchronously (the
    host goes on queueing work; the copy is ordered before the kernels that read it on the stream)."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def loader_workers(device: torch.device, world: int = 1) -> int:
    """DataLoader processes for image decoding: none on the CPU (they would take the cores the model
    computes on), on CUDA up to 4 per GPU process, leaving one core of its share to the main process."""
    if device.type != "cuda":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(4, cores // max(1, world) - 1))


# ---- random number generators -----------------------------------------------------------------------
def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _local_rng_state() -> dict[str, Any]:
    import numpy as np

    _, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, every visible GPU's, numpy, Python), all CPU tensors.

    Under torch.distributed every rank must call it (a collective): "ranks" then holds each rank's
    states, in rank order, so the rank that saves the checkpoint saves every rank's GPU RNG.
    """
    state = _local_rng_state()
    rank, world = _world()
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, state)
        state["ranks"] = gathered
    return state


def restore_rng(state: Mapping[str, Any]) -> list[str]:
    """Restore what `rng_state` saved, for this rank; returns notes on what could not be restored.

    GPU states are restored for the GPUs that exist now (the first ones saved); the rest, or all of
    them on a machine without CUDA, are named in a note, and those GPUs start from their current state.
    """
    import numpy as np

    notes: list[str] = []
    rank, world = _world()
    ranks = state.get("ranks")
    own: Mapping[str, Any] = state
    if ranks:
        if len(ranks) != world:
            notes.append(f"the checkpoint holds the RNG states of {len(ranks)} process(es), this run has {world}"
                         + (f"; rank {rank} takes rank 0's" if rank >= len(ranks) else ""))  # fmt: skip
        own = ranks[rank] if rank < len(ranks) else ranks[0]
    torch.set_rng_state(own["torch"].cpu())
    n = own["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype("uint32"), int(n["pos"]), int(n["has_gauss"]), float(n["cached"])))
    version, internal, gauss = own["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = list(own.get("cuda") or [])
    if cuda:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for i, s in enumerate(cuda[:visible]):
            torch.cuda.set_rng_state(s.cpu(), i)
        if visible < len(cuda):
            kept = f"restored {visible} of them" if visible else "there is no CUDA device now"
            notes.append(f"the checkpoint holds the CUDA RNG states of {len(cuda)} GPU(s); {kept}: random draws on the GPU "
                         "(dropout, drop-path, smoothing noise) differ from an uninterrupted run")  # fmt: skip
    return notes


# ---- stopping ------------------------------------------------------------------------------------------
class StopFlag:
    """SIGINT/SIGTERM ask for a stop at the next step boundary, where every rank agrees (`agreed`).

    A second signal stops at once (KeyboardInterrupt, no checkpoint) only in a single process and
    only after `grace_s` seconds: under torchrun every worker gets the terminal's SIGINT and then the
    one the agent forwards, and that second one must not skip the checkpoint. (The agent kills its
    workers some 30 s after forwarding; the current step must end before then.)
    """

    def __init__(self, grace_s: float = 2.0) -> None:
        self.requested = False
        self.grace_s = grace_s
        self._first: float | None = None
        self._group: Any = None

    def handler(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self._first = True, now
            print("\nnasir: stopping at the next step boundary, after a checkpoint (again to stop at once)", file=sys.stderr)
            return
        if under_torchrun() or (self._first is not None and now - self._first < self.grace_s):
            return  # the forwarded copy of the same Ctrl-C
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def agreed(self) -> bool:
        """Called by every rank at every step boundary: does any rank want to stop? The same answer
        on every rank (a MAX all-reduce of the flag over a CPU (gloo) group: no GPU synchronisation)."""
        _, world = _world()
        if world == 1:
            return self.requested
        import torch.distributed as dist

        if self._group is None:
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        self.requested = bool(flag[0])
        return self.requested


# ---- numerics -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def fp32_arch_grads(enabled: bool = True) -> Iterator[None]:
    """TF32 off in the block (cuDNN convolutions and cuBLAS matmuls), then the previous settings.

    On Ampere and newer GPUs cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa). The
    second-order architecture gradient is a finite difference of two gradients (DARTS Eq. 8), which
    TF32 rounding moves a lot (docs/gpu.md); the search computes architecture gradients in full fp32.
    """
    if not enabled:
        yield
        return
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def precision_record(fp32_arch: bool) -> dict[str, Any]:
    """What metrics.jsonl says about precision: the architecture-gradient setting and TF32 elsewhere."""
    return {"fp32_arch_grads": bool(fp32_arch), "tf32_conv": bool(torch.backends.cudnn.allow_tf32),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}  # fmt: skip


CUBLAS_WORKSPACE = ":4096:8"  # one of the two values cuBLAS documents for reproducible results


def deterministic(on: bool = True) -> dict[str, Any]:
    """The deterministic mode: cuDNN deterministic and not autotuned, torch's deterministic algorithms
    (an op without one raises instead of running nondeterministically), and cuBLAS's fixed workspace
    (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts: set it before the first CUDA matmul; a value
    the user set is kept). Returns the settings for metrics.jsonl. `on=False` undoes all but the
    environment variable."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = on
    torch.use_deterministic_algorithms(on)
    return {"deterministic": on, "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if on else None}


@contextlib.contextmanager
def deterministic_mode(on: bool = True) -> Iterator[dict[str, Any]]:
    """`deterministic(on)` for the block (a no-op when off), then the previous settings."""
    if not on:
        yield {"deterministic": False}
        return
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    try:
        yield deterministic(True)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[:2]
        torch.use_deterministic_algorithms(old[2])


def fixed_shapes(device: torch.device) -> bool:
    """cuDNN autotuning for a loop whose input shapes never change (search and training steps): the
    first step of each shape tries the algorithms, the rest use the fastest. Off in the deterministic
    mode (autotuning may pick a different algorithm per run). Returns whether it is on."""
    on = device.type == "cuda" and not torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = on
    return on


class GlobalAvgPool(nn.Module):
    """The mean over H and W, keeping them as 1 x 1: AdaptiveAvgPool2d(1)'s output, whose CUDA
    backward torch refuses under deterministic algorithms (it has no deterministic kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def deterministic_pooling(model: nn.Module) -> int:
    """Replace every AdaptiveAvgPool2d(1) in `model` by GlobalAvgPool (no weights: the state_dict is
    unchanged); returns how many. For the deterministic mode on CUDA."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalAvgPool())
                count += 1
    return count


# ---- memory -------------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset, in MiB; None on the CPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
