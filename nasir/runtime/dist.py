"""Distributed set-up (docs/runtime.md): torchrun sets WORLD_SIZE/RANK; one process group per process."""

from __future__ import annotations

import os

import attrs
import torch


@attrs.frozen
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """torchrun sets WORLD_SIZE/RANK; start the process group once (NCCL on CUDA, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def shard(idx: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's part of a global batch: equal contiguous slices (the global batch must divide)."""
    if d.world == 1:
        return idx
    n = len(idx) // d.world
    return idx[d.rank * n : (d.rank + 1) * n]


def barrier(d: Dist) -> None:
    """Every rank waits here (nothing to wait for in one process)."""
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
