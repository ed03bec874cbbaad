"""The IR passes, by name (the names `--dump-after` takes and `nasir.pipeline.PIPELINES` lists),
and the declared pipelines built from them."""

from __future__ import annotations

from collections.abc import Callable

from nasir.pipeline import Pass, PassManager, assemble


def registry() -> dict[str, type[Pass]]:
    """name -> Pass class, imported on demand (the passes import the IR, not torch)."""
    from nasir.passes.dead_nodes import DeadNodes
    from nasir.passes.derive import Derive
    from nasir.passes.fuse import FuseOps
    from nasir.passes.mixed_ops import MixedOps
    from nasir.passes.topology import Topology
    from nasir.passes.zero_ops import ZeroOps

    return {p.name: p for p in (MixedOps, ZeroOps, Topology, DeadNodes, FuseOps, Derive)}


def pipeline(name: str, *given: Pass, verify: bool | None = None, dump_after: str | None = None,
             dump: Callable[[str], None] = print) -> PassManager:  # fmt: skip
    """The PassManager of the declared pipeline `name` (nasir/pipeline.py PIPELINES); a pass that
    takes arguments (Derive) is `given` as an instance."""
    return PassManager(assemble(name, given, registry()), verify=verify, dump_after=dump_after, dump=dump)
