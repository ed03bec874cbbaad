"""Provenance: what a run directory or checkpoint was made from, and the check that refuses a mismatch
(issue 14, item 3; README.md, "What provenance promises", says what it promises).

One record, used by search and training alike: the spec (a SHA-256 of its canonical text, and the
text itself, so that a mismatch can say which line differs), the `--set` overrides, the seed, the data
spec and its split. It is written as `provenance.json` into every run directory and under the key
"provenance" into every checkpoint (plain str/int/float/list/dict values, so `torch.load(...,
weights_only=True)` reads it). `--resume`, `--weights`, `eval`, `compile --weights` and
`verify-export` build the record of what they are about to do and `compare` it with the stored one:
each field they care about that differs becomes a line of the diagnostic.

The spec text is canonical (nasir.printer of every cell, network and search block, those from includes
too), so comments, layout and include structure do not count; an op, an edge, a parameter does.
A checkpoint without a record (a bare state_dict, a DARTS release) is accepted: there is nothing to
compare.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticError

VERSION = 1
FILE = "provenance.json"

# What each use compares: an architecture (weights) needs the spec and the overrides; a resume also
# the seed and the data; an evaluation the held-out split (data, seed, holdout fraction).
# "network" is the elaborated network's parameters (defaults with the overrides applied, the auxiliary
# head left out: it only trains, and weights load without it), so `--set C=16` where C defaults to 16
# is the same network.
ARCHITECTURE = ("spec", "network")
RESUME = ("kind", "spec", "overrides", "network", "seed", "data", "split")
HELD_OUT = ("spec", "network", "data", "split")


def canonical_text(spec: ir.Spec) -> str:
    """The elaborated spec as canonical `.cell` text, included elements in place (no include lines)."""
    from nasir import printer

    blocks = [f"opset {o.name} = {o.expr}" for o in spec.opsets]
    blocks += [printer.cell(c) for c in spec.cells]
    blocks += [printer.network(n) for n in spec.networks]
    if spec.search is not None:
        blocks.append(printer.search(spec.search))
    return "\n\n".join(blocks) + "\n"


def normal_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, str]:
    """`--set` values as {name: text of the value}, in name order (the last of repeated names wins)."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        from nasir.macro import parse_overrides

        items = list(parse_overrides(list(overrides))[0].items())
    return {k: _value_text(v) for k, v in sorted(items)}


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, ir.Expr):
        from nasir.printer import expr

        return expr(v)
    return str(v)


def network_parameters(plan) -> dict[str, str]:
    """The elaborated network's parameters (nasir.macro.Plan.env) without `auxiliary`, and its input shape."""
    out = {k: _value_text(v) for k, v in plan.env if k != "auxiliary"}
    out["input"] = "x".join(map(str, plan.input))
    return out


def normal_data(text: str | None) -> str | None:
    """A data spec with its path made absolute (`folder:./x` and `folder:/abs/x` are the same data)."""
    if text is None:
        return None
    kind, colon, rest = text.partition(":")
    if kind in ("cifar10", "folder", "coco") and rest:
        return f"{kind}:{Path(rest).expanduser().resolve()}"
    return text


def record(spec: ir.Spec, *, kind: str, overrides=None, plan=None, seed: int | None = None, data: str | None = None,
           split: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """The provenance of a run of `kind` ("train", "search", "detection", ...) on `spec`.

    `split`: how the held-out set was drawn, e.g. {"holdout": 0.2, "seed": 0}; `extra`: further plain
    values recorded but not compared (e.g. the search's derived-network seed).
    """
    text = canonical_text(spec)
    return {
        "version": VERSION,
        "kind": kind,
        "spec_file": str(spec.file) if spec.file is not None else None,
        "spec_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "spec_text": text,
        "overrides": normal_overrides(overrides),
        "network": network_parameters(plan) if plan is not None else None,
        "seed": seed,
        "data": normal_data(data),
        "split": dict(split) if split is not None else None,
        **extra,
    }


def of(checkpoint: Any) -> dict[str, Any] | None:
    """The record stored in a loaded checkpoint (None if it has none)."""
    if isinstance(checkpoint, Mapping):
        p = checkpoint.get("provenance")
        if isinstance(p, Mapping) and "spec_sha256" in p:
            return dict(p)
    return None


def read(path: str | Path) -> dict[str, Any] | None:
    """The record in a checkpoint file or a run directory (its provenance.json); None if there is none.

    The checkpoint is read with weights_only=True (data, never code); an unreadable file is left to the
    loader that reads it next, which says why.
    """
    p = Path(path)
    if p.is_dir():
        p = p / FILE
        if not p.is_file():
            return None
        try:
            return of({"provenance": json.loads(p.read_text(encoding="utf-8"))})
        except (OSError, ValueError):
            return None
    if not p.is_file():
        return None
    if p.suffix == ".json":
        try:
            return of({"provenance": json.loads(p.read_text(encoding="utf-8"))})
        except (OSError, ValueError):
            return None
    import torch

    try:
        return of(torch.load(p, map_location="cpu", weights_only=True))
    except Exception:  # noqa: BLE001 - not a checkpoint: its loader reports that
        return None


def write(directory: str | Path, rec: Mapping[str, Any]) -> None:
    """provenance.json in a run directory (atomically)."""
    from nasir.io import atomic_write

    atomic_write(Path(directory) / FILE, json.dumps(dict(rec), indent=2, sort_keys=True) + "\n")


def _spec_difference(then: str, now: str) -> str:
    a, b = then.splitlines(), now.splitlines()
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"canonical line {i + 1}: then '{x.strip()}', now '{y.strip()}'"
    if len(a) != len(b):
        longer, which = (a, "then") if len(a) > len(b) else (b, "now")
        k = min(len(a), len(b))
        return f"canonical line {k + 1}: only {which}: '{longer[k].strip()}'"
    return "the texts hash differently"


def _show(v: Any) -> str:
    if v is None:
        return "(not recorded)"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={v[k]}" for k in v) or "(none)"
    return str(v)


def compare(then: Mapping[str, Any] | None, now: Mapping[str, Any], fields: Iterable[str] = RESUME) -> list[str]:
    """What differs between a stored record (`then`) and the current one, one phrase per field; [] if
    nothing does, or if there is no stored record. A field the stored record lacks is not compared."""
    if then is None:
        return []
    out: list[str] = []
    for f in fields:
        if f == "spec":
            if then.get("spec_sha256") != now.get("spec_sha256"):
                where = _spec_difference(then.get("spec_text") or "", now.get("spec_text") or "")
                out.append(f"the spec differs ({where})")
            continue
        if f not in then or then.get(f) is None:
            continue
        a, b = then.get(f), now.get(f)
        if f == "split" and isinstance(a, Mapping) and isinstance(b, Mapping):
            a = {k: a[k] for k in a if k in b}  # compare what both record
            b = {k: b[k] for k in a}
        if f in ("overrides", "network"):
            a, b = dict(a or {}), dict(b or {})
        if a != b:
            out.append(f"{f}: {_show(a)} then, {_show(b)} now")
    return out


def require_same(then: Mapping[str, Any] | None, now: Mapping[str, Any], fields: Iterable[str], what: str,
                 hint: str | None = None) -> None:  # fmt: skip
    """Raise a diagnostic naming every difference between `then` (read from `what`) and `now`."""
    diffs = compare(then, now, fields)
    if diffs:
        raise DiagnosticError([Diagnostic(f"{what} was made from something else: " + "; ".join(diffs),
                                          hint=hint or "use the spec, --set values, seed and data it was made with")])  # fmt: skip
