"""What `nasir info` measures on built modules: parameters and MACs of a derived network, the
supernet's weights of a search space, a language model's counts (runtime layer).

The counting over the IR alone (cell depth and width, mixed edges, architecture variables, the number
of candidate architectures) and the report's text are in nasir/analysis.py; this module builds the
networks and supernets that the counts of a module need: parameters and MACs are counted on the built
module (targets/blocks.py `count_params`, `count_macs`, by the rules of docs/ops.md, "Counting rules").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasir import ir
from nasir.analysis import (
    candidates,
    cell_depth,
    cell_kinds,
    cell_width,
    mixed_edges,
    op_variables,
    topology_variables,
    width_text,
)


def _supernet_weights(spec: ir.Spec, plan: Any) -> tuple[int | None, str | None]:
    """Weight parameters of the search supernet (nasir.search.supernet), or None and why not."""
    from nasir.diagnostics import DiagnosticError

    try:
        from nasir.search.supernet import build_supernet
    except ImportError as e:
        return None, f"no supernet builder ({e.name or e})"
    try:
        with _shapes_only():
            net = build_supernet(spec, plan, seed=0)
    except DiagnosticError as e:
        return None, e.diagnostics[0].message if e.diagnostics else "the supernet cannot be built"
    return sum(p.numel() for p in net.weight_parameters()), None


def _shapes_only():
    """Build on PyTorch's meta device: parameters and activations have shapes but no storage, so
    counting parameters and MACs (a forward pass with hooks that read only shapes) costs no memory
    and no arithmetic, whatever the input size or width (`input (3, 20000, 20000)`, `--set C=100000`
    used to allocate 100+ GB; issue 14.12). The counts are those of the real network (tested)."""
    import torch

    return torch.device("meta")


def info(spec: ir.Spec | str | Path, overrides: Any = None, input_shape: Sequence[int] | None = None,
         network: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Everything `nasir info` shows, as JSON-serialisable data (see the module docstring).

    `input_shape` (C, H, W): also count the MACs at that input, of the whole network and of its backbone
    (stems and cells: everything but the classifier), as OStr-DARTS' Table VII reports backbone FLOPs at
    224 x 224; FLOPs are given as 2 x MACs (one multiply and one add), labelled as such. `network`: which
    of the spec's networks (default: the first)."""
    from nasir.lower import resolve

    recurrent = _recurrent_spec(spec, overrides, network)
    if recurrent is not None:
        return recurrent_info(*recurrent)
    spec, plan = resolve(spec, overrides, network)
    kinds = cell_kinds(spec, plan)
    counts = {c.name: sum(b.cell == c.name for b in plan.cells) for c in kinds}
    space = any(c.is_search_space for c in kinds)
    out: dict[str, Any] = {
        "file": spec.file,
        "network": plan.network,
        "parameters": dict(plan.env),
        "input": list(plan.input),
        "search_space": space,
        "cells": [],
    }
    for c in kinds:
        entry: dict[str, Any] = {
            "name": c.name, "instances": counts[c.name], "reduction": c.reduction, "inputs": len(c.inputs),
            "nodes": len(c.nodes), "edges": len(c.edges),
        }  # fmt: skip
        entry.update(mixed_edges=mixed_edges(c), op_variables=op_variables(c), topology_variables=topology_variables(c),
                     candidates=candidates(c, spec.search.limits if spec.search else ()))  # fmt: skip
        if c.is_search_space:
            entry.update(depth=None, width=None, width_text=None)
        else:
            w = cell_width(c)
            entry.update(depth=cell_depth(c), width=float(w), width_text=width_text(w))
        out["cells"].append(entry)
    if space and input_shape is not None:
        from nasir.diagnostics import error_at

        raise error_at(None, "--input counts the MACs of a derived network; this spec is a search space",
                       "derive an architecture first (nasir search), then run nasir info on derived.cell")  # fmt: skip
    if space:
        sn, why = _supernet_weights(spec, plan)
        out["params"] = out["params_no_aux"] = out["macs"] = None
        out["space"] = {
            "mixed_edges": sum(e["mixed_edges"] for e in out["cells"]),
            "architecture_variables": sum(e["op_variables"] + e["topology_variables"] for e in out["cells"]),
            "supernet_weight_params": sn,
            "supernet_note": why,
            "candidates": None if any(e["candidates"] is None for e in out["cells"]) else math.prod(e["candidates"] for e in out["cells"]),
        }
        return out
    from nasir.lower import build_from_plan
    from nasir.targets.blocks import count_macs, count_params

    with _shapes_only():
        model = build_from_plan(spec, plan)
    total = count_params(model)
    aux = count_params(model.auxiliary_head) if model.auxiliary_head is not None else 0
    out.update(params=total, params_no_aux=total - aux, macs=count_macs(model, plan.input), space=None)
    if input_shape is not None:
        out["at_input"] = _macs_at(spec, model, plan, tuple(int(x) for x in input_shape))
    return out


def _macs_at(spec: ir.Spec, model: Any, plan: Any, shape: tuple[int, int, int]) -> dict[str, Any]:
    """MACs of the network and of its backbone on one image of `shape` (docs/ops.md, "Counting rules")."""
    from torch import nn

    from nasir.diagnostics import error_at
    from nasir.targets.blocks import count_macs

    if shape[0] != plan.input[0]:
        raise error_at(None, f"--input has {shape[0]} channels; network '{plan.network}' takes {plan.input[0]}")
    try:
        total = count_macs(model, shape)
    except RuntimeError as e:  # e.g. an input too small for the reductions
        raise error_at(None, f"network '{plan.network}' does not run on a {'x'.join(map(str, shape))} input: {str(e).splitlines()[0]}") from None
    head = model.classifier
    head_macs = head.in_features * head.out_features if isinstance(head, nn.Linear) else 0
    return {"input": list(shape), "macs": total, "backbone_macs": total - head_macs, "backbone_flops": 2 * (total - head_macs)}


def _recurrent_spec(spec: ir.Spec | str | Path, overrides: Any, network: str | None = None) -> tuple[ir.Spec, dict[str, Any]] | None:
    """(verified spec, override values) when the spec is a language model (docs/recurrent.md), else None."""
    from nasir.api import load, select_network
    from nasir.macro import parse_overrides
    from nasir.rnn.lower import is_recurrent

    values = dict(overrides) if isinstance(overrides, dict) else parse_overrides(list(overrides))[0] if overrides else {}
    if isinstance(spec, ir.Spec):
        loaded = select_network(spec, network)
    else:
        loaded = load(spec, overrides=list(overrides) if isinstance(overrides, list | tuple) else values or None, network=network)
    return (loaded, values) if is_recurrent(loaded) else None


def recurrent_info(spec: ir.Spec, overrides: dict[str, Any]) -> dict[str, Any]:
    """`nasir info` of a language model: parameters with the tied decoder counted once (the authors' count)
    and with it counted separately, MACs per token, the cell's depth; for a space its size (nasir/rnn/info.py)."""
    from nasir.rnn.info import lm_info
    from nasir.rnn.lower import env_of, lower

    low = lower(spec, overrides)
    d = lm_info(low.lm, low.genotype if low.genotype is not None else low.space)  # type: ignore[arg-type]
    c = low.cell
    space = low.space is not None
    entry: dict[str, Any] = {"name": c.name, "recurrent": True, "nodes": len(c.nodes), "edges": len(c.edges),
                             "mixed_edges": mixed_edges(c), "op_variables": op_variables(c), "depth": d["depth"]}  # fmt: skip
    out: dict[str, Any] = {"file": spec.file, "network": low.network.name, "parameters": env_of(low.network, overrides),
                           "kind": "recurrent", "search_space": space, "cells": [entry]}  # fmt: skip
    out.update({k: d[k] for k in ("tokens", "ninp", "nhid", "params", "params_untied", "params_no_embedding", "macs_per_token", "depth")})
    if space:
        live = sum(o != "none" for o in low.space.ops)  # type: ignore[union-attr]
        out["space"] = {"mixed_edges": entry["mixed_edges"], "architecture_variables": entry["op_variables"],
                        "supernet_weight_params": d["params"],
                        "candidates": math.prod(i * live for i in range(1, len(c.nodes) + 1))}  # k = 1 per node  # fmt: skip
    return out
