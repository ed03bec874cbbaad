"""Checkpoints of AutoDL's NAS-Bench-201 network (D-X-Y/AutoDL-Projects, `TinyNetwork`) -> nasir names.

AutoDL's TinyNetwork (docs/autodl.md) is the network NAS-Bench-201 trained
(Dong & Yang, ICLR 2020, Section 2.1): `stem` (conv 3x3, BN), `cells` (N InferCells, a ResNetBasicblock,
N InferCells, a ResNetBasicblock, N InferCells), `lastact` (BN, ReLU), `global_pooling`, `classifier`.
nasir builds the same network for a NAS-Bench-201 string (`nasir import`, the `nb201` macro) with the
same names for the stem, the residual blocks (`conv_a`, `conv_b`, `downsample`) and the classifier. Two
things differ and are mapped here (docs/autodl.md):

- `lastact.0` (the BN before pooling) is nasir's `head_pre.0`.
- An InferCell keeps its ops in `layers.k`, one per edge of the genotype in the order it was written;
  NAS-Bench-201 writes every edge, so k enumerates the edges j <- i node by node (1<-0, 2<-0, 2<-1,
  3<-0, 3<-1, 3<-2). A cell built from AutoDL's short form (`none` edges left out) numbers only the
  edges it has, in the same order. nasir keeps the op of edge j <- i in `_ops.m` where m is its place
  among the IR cell's edges. The mapping goes by edge (j <- i), found in nasir's cell schedule, and
  each op's weights must have the names and shapes of the network's op on that edge; the order of
  parameters in either file plays no part.

Anything that does not fit (another architecture, N or C) is an error naming the cell and the edge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasir.diagnostics import Diagnostic, DiagnosticError

_LAYER = re.compile(r"cells\.(\d+)\.layers\.(\d+)\.(.+)")
_CELL = re.compile(r"cells\.(\d+)\.")
_RESIDUAL = ("conv_a.", "conv_b.", "downsample.")


def is_tiny_network(sd: Mapping[str, Any]) -> bool:
    """Whether a state_dict has AutoDL's TinyNetwork layout (InferCell `layers`, `lastact`)."""
    return any(k.startswith("lastact.") or _LAYER.match(k) for k in sd)


def _error(path: str | Path, message: str, hint: str | None = None) -> DiagnosticError:
    return DiagnosticError([Diagnostic(f"checkpoint '{path}' (AutoDL's TinyNetwork) does not fit the network: {message}",
                                       None, hint)])  # fmt: skip


def _shapes(tensors: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items() if not k.endswith("num_batches_tracked")}


def _describe(tensors: Mapping[str, Any]) -> str:
    """What an op is, from its weights: '3x3 convolution 16->16', 'no weights (none, skip_connect or a pool)'."""
    convs = [tuple(v.shape) for k, v in tensors.items() if k.endswith("weight") and len(v.shape) == 4]
    if not convs:
        return "no weights (none, skip_connect or a pooling)"
    return ", ".join(f"{s[2]}x{s[3]} convolution {s[1]}->{s[0]}" for s in convs)


def _own_op(own: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in own.items() if k.startswith(prefix)}


def _residual_positions(keys: Any) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := _CELL.match(k)) and k[m.end() :].startswith(_RESIDUAL)})


def from_tiny_network(model: Any, sd: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """`sd` (AutoDL TinyNetwork names) renamed to `model`'s names, mapped edge by edge; raises `DiagnosticError`."""
    cells = getattr(model, "cells", None)
    own = model.state_dict()
    if cells is None or not any(getattr(c, "n_inputs", 0) == 1 for c in cells):  # CellModule.n_inputs
        raise _error(path, "the network has no NAS-Bench-201 cells (one input per cell)",
                     "import the architecture's NAS-Bench-201 string: nasir import ARCH_STRING")  # fmt: skip

    # Where the residual reduction blocks sit fixes N: cells 0..N-1, the block at N, ...
    theirs, ours = _residual_positions(sd), [i for i, c in enumerate(cells) if type(c).__name__ == "ResidualBlock"]
    if theirs != ours:
        n_theirs, n_ours = (theirs[0] if theirs else "?"), (ours[0] if ours else "?")
        raise _error(path, f"its reduction blocks are cells {theirs} (N = {n_theirs}), the network's are {ours} (N = {n_ours})",
                     f"build the network with the checkpoint's N: --set N={n_theirs}")  # fmt: skip

    out: dict[str, Any] = {}
    layers: dict[int, dict[int, dict[str, Any]]] = {}
    for key, value in sd.items():
        if m := _LAYER.match(key):
            i, k, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            layers.setdefault(i, {}).setdefault(k, {})[rest] = value
        elif key.startswith("lastact.0."):  # TinyNetwork.lastact = (BN, ReLU): the BN of nasir's head
            if "head_pre.0.weight" not in own and "head_pre.0.running_mean" not in own:
                raise _error(path, "its head starts with a batch norm (lastact), the network's does not")
            out["head_pre.0." + key[len("lastact.0.") :]] = value
        else:  # stem.*, cells.i.conv_a/conv_b/downsample.*, classifier.*: the same names in nasir
            out[key] = value

    for i, cell in enumerate(cells):
        if not hasattr(cell, "_schedule"):
            continue
        mapping = _map_cell(i, cell, layers.pop(i, {}), own, path)
        for (_k, rest), (m, value) in mapping.items():
            out[f"cells.{i}._ops.{m}.{rest}"] = value
    if layers:
        i = min(layers)
        raise _error(path, f"it has InferCell weights for cell {i}, which the network lacks or has as another block",
                     "the checkpoint holds more cells: pass its N and C with --set")  # fmt: skip
    return out


def _map_cell(i: int, cell: Any, layers: dict[int, dict[str, Any]], own: Mapping[str, Any],
              path: str | Path) -> dict[tuple[int, str], tuple[int, Any]]:  # fmt: skip
    """{(checkpoint layer k, param name): (nasir op index m, tensor)} for cell i."""
    edges = {(j, src): m for j, node in enumerate(cell._schedule, start=1) for m, src in node}
    canonical = [(j, s) for j in range(1, len(cell._schedule) + 1) for s in range(j)]
    present = [e for e in canonical if e in edges and type(cell._ops[edges[e]]).__name__ != "Zero"]
    problem = None
    for order in (canonical, present):  # every edge written (NAS-Bench-201), or AutoDL's short form
        found = _try_order(i, cell, layers, own, edges, order)
        if isinstance(found, dict):
            return found
        problem = problem or found
    raise _error(path, problem or f"cell {i} does not match",
                 "it was trained for another architecture (or C); import its NAS-Bench-201 string with nasir import")  # fmt: skip


def _try_order(i: int, cell: Any, layers: dict[int, dict[str, Any]], own: Mapping[str, Any],
               edges: dict[tuple[int, int], int], order: list[tuple[int, int]]) -> dict | str:  # fmt: skip
    mapped: dict[tuple[int, str], tuple[int, Any]] = {}
    covered: set[int] = set()
    for k in sorted(layers):
        tensors = layers[k]
        if k >= len(order):
            return f"cell {i} has layer {k} in the checkpoint; the network's cell has {len(order)} edges"
        j, s = order[k]
        where = f"cell {i}, edge {j}<-{s} (layer {k} of the checkpoint)"
        if (j, s) not in edges:
            return f"{where}: the checkpoint has {_describe(tensors)}, the network has no edge there"
        m = edges[(j, s)]
        theirs, ours = _shapes(tensors), _shapes(_own_op(own, f"cells.{i}._ops.{m}."))
        if theirs != ours:
            return (f"{where}: the checkpoint has {_describe(tensors)}, the network's "
                    f"{type(cell._ops[m]).__name__} has {_describe(_own_op(own, f'cells.{i}._ops.{m}.'))}")  # fmt: skip
        covered.add(m)
        for rest, value in tensors.items():
            mapped[(k, rest)] = (m, value)
    for (j, s), m in edges.items():
        if m not in covered and _shapes(_own_op(own, f"cells.{i}._ops.{m}.")):
            return f"cell {i}, edge {j}<-{s}: the network's {type(cell._ops[m]).__name__} has weights, the checkpoint none"
    return mapped
