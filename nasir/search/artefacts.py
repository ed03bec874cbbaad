"""What a search writes besides its checkpoint (docs/runtime.md): derived.cell text, the genotype,
the ONNX export of the derived network, the alpha table (targets/draw.py `alphas_figure`); the cost function budgets are checked with."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from nasir import ir
from nasir.diagnostics import DiagnosticError
from nasir.io import atomic_write
from nasir.macro import Plan, replan


def canonical(spec: ir.Spec) -> str:
    from nasir.printer import cell, network

    return "\n\n".join([cell(c) for c in spec.cells] + [network(n) for n in spec.networks]) + "\n"


def genotype_of(derived: ir.Spec) -> str | None:
    """The DARTS genotype, else the NAS-Bench-201 string, else None (the cells have neither form)."""
    from nasir import genotype

    for fn in (genotype.spec_to_genotype, genotype.spec_to_nb201):
        try:
            return fn(derived)
        except DiagnosticError:
            continue
    return None


def derived_text(derived: ir.Spec, source: str, overrides: Mapping[str, Any] | None = None,
                 directory: str | Path | None = None) -> str:
    """Standalone `.cell` text of a derived spec: every cell and network it needs, whatever file they came from.

    Network parameters set on the command line become the defaults, so the file builds the network searched.
    `directory`: where the text will be written; the spec's op files (`ops "..."`, docs/ops.md "Derived
    files") are copied there and named by `ops` lines after the header, so the file loads its ops from
    beside itself (nasir.ops.bundle_op_files). Without it the text has no `ops` lines.
    """
    from nasir import ops, printer

    derived = with_overrides(derived, overrides)
    header = f"# Derived by nasir search from {Path(source).name}.\n"
    if derived.op_files and directory is not None:
        derived = ops.bundle_op_files(derived, directory)
        header += printer.op_file_lines(derived, directory) + "\n\n"
    return header + canonical(derived)


def literal(v: Any) -> ir.Expr:
    return ir.Bool(v) if isinstance(v, bool) else ir.Num(v)


def cost_fn(plan: Plan) -> Callable[[ir.Spec], dict[str, float]]:
    def cost(spec: ir.Spec) -> dict[str, float]:
        from nasir.targets.blocks import count_macs, count_params
        from nasir.targets.network import Network

        net = Network(spec, replan(spec, plan))  # a candidate's cells concatenate their own nodes
        aux = net.auxiliary_head
        params = count_params(net) - (count_params(aux) if aux is not None else 0)
        return {"params": float(params), "macs": float(count_macs(net, plan.input))}

    return cost


def export_onnx(derived: ir.Spec, plan: Plan, path: Path, seed: int = 0) -> Path:
    from nasir.targets.export import to_onnx
    from nasir.targets.network import build

    model = build(derived, replan(derived, plan), seed=seed).eval()  # the derived cells' own channels
    # Issue 14, item 6: the file is the derived network's seeded initialisation, not trained weights;
    # it says so, and records the seed (nasir verify-export reads "nasir.seed").
    meta = {"nasir.seed": str(seed), "nasir.weights": "untrained: the derived network's seeded initialisation (train it with nasir train)"}
    return to_onnx(model, torch.zeros(1, *plan.input), path, metadata=meta)


def with_overrides(derived: ir.Spec, overrides: Mapping[str, Any] | None) -> ir.Spec:
    """The derived spec whose network parameters set by `overrides` (`--set C=4`) are the defaults, so
    that compiling it builds the network searched."""
    if not overrides:
        return derived
    nets = []
    for n in derived.networks:
        params = tuple(attrs.evolve(p, default=literal(overrides[p.name])) if p.name in overrides else p for p in n.params)
        nets.append(attrs.evolve(n, params=params))
    return attrs.evolve(derived, networks=tuple(nets))


def write_outputs(out: Path, *, derived: ir.Spec, text: str, genotype: str | None, variables: Mapping[str, Any], spec: ir.Spec,
                  plan: Plan, seed: int, artifacts: bool, checkpoint: str) -> tuple[dict[str, Path], list[str]]:  # fmt: skip
    """derived.cell, genotype.txt, the variables' JSON files; with `artifacts` also derived.onnx, derived.png,
    alphas.png. Returns the files (by name) and notes on what could not be written."""
    files: dict[str, Path] = {}
    notes: list[str] = []
    atomic_write(out / "derived.cell", text)
    files["derived.cell"] = out / "derived.cell"
    if genotype is not None:
        atomic_write(out / "genotype.txt", genotype + "\n")
        files["genotype.txt"] = out / "genotype.txt"
    for name, values in variables.items():
        atomic_write(out / f"{name}.json", json.dumps(values) + "\n")
        files[f"{name}.json"] = out / f"{name}.json"
    files["metrics.jsonl"] = out / "metrics.jsonl"
    files["checkpoint.pt"] = out / checkpoint
    if not artifacts:
        return files, notes
    try:
        files["derived.onnx"] = export_onnx(derived, plan, out / "derived.onnx", seed=seed)
    except ImportError as e:
        notes.append(f"no ONNX export: {e}")
    try:
        from nasir.targets.draw import draw

        files["derived.png"] = draw(derived, out / "derived.png")
    except ImportError as e:
        notes.append(f"no cell drawing: {e}")
    try:
        # softmax(alpha) with the operation strengths beside it (OStr-DARTS Eq. 11; the window's mean, as
        # strengths.json holds it) and the derivation's picks framed (targets/draw.py `alphas_table`).
        from nasir.targets.draw import alphas_figure

        files["alphas.png"] = alphas_figure(spec, variables["alphas"], out / "alphas.png",
                                            strengths=variables.get("strengths") or None, derived=derived)  # fmt: skip
    except ImportError as e:
        notes.append(f"no alpha table: {e}")
    return files, notes
