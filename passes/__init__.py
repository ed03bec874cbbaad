"""The IR passes, by name (the names `--dump-after` takes and `nasir.pipeline.PIPELINES` lists)."""

from __future__ import annotations


def registry() -> dict:
    """name -> Pass class, imported on demand (the passes import the IR, not torch)."""
    from nasir.passes.dead_nodes import DeadNodes
    from nasir.passes.derive import Derive
    from nasir.passes.fuse import FuseOps
    from nasir.passes.mixed_ops import MixedOps
    from nasir.passes.topology import Topology
    from nasir.passes.zero_ops import ZeroOps

    return {p.name: p for p in (MixedOps, ZeroOps, Topology, DeadNodes, FuseOps, Derive)}
