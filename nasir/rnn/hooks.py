"""Where the main CLI and library hand a recurrent spec to nasir/rnn (dispatch by network kind).

Each function returns None when the spec is not a language model, so a call site stays one line:
    if (rc := hooks.search_cli(args)) is not None: return rc          # nasir/search/cli.py run_search
    if (rc := hooks.train_cli(args, spec)) is not None: return rc     # nasir/cli.py cmd_train
    diffs = hooks.verify_export(model, spec, ...)  # None: not an LM   # nasir/cli.py cmd_verify_export
`nasir.compile` and `nasir.build` (nasir/__init__.py) dispatch on the loaded spec themselves
(`nasir.rnn.check.is_recurrent`), so `nasir compile` reads the spec once; `compile_spec` is that
dispatch for a caller holding a path. The CLI reads the spec once for search and train too: cmd_search
puts the loaded spec in `args.file` (the runner takes a spec for a path), cmd_train passes it here.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from nasir import ir
from nasir.diagnostics import Diagnostic, DiagnosticError


def recurrent_spec(spec_or_path: ir.Spec | str | Path, overrides: Any = None, network: str | None = None) -> ir.Spec | None:
    """The verified spec (with `network` first, nasir.api.select_network) if that network is a language
    model, else None (errors are left to the caller's path)."""
    from nasir.api import load, select_network
    from nasir.rnn.lower import is_recurrent

    try:
        if isinstance(spec_or_path, ir.Spec):
            spec = select_network(spec_or_path, network)
        else:
            spec = load(spec_or_path, overrides=list(overrides) if overrides and not isinstance(overrides, dict) else overrides,
                        network=network)  # fmt: skip
    except DiagnosticError:
        return None
    return spec if is_recurrent(spec) else None


def _data(data: str | None) -> str:
    return "embedded" if data in (None, "digits") else data


def search_cli(args: Any) -> int | None:
    """`nasir search FILE` of a recurrent space; the flags a recurrent search has, the others refused."""
    from nasir.rnn import api
    from nasir.rnn.search import RecurrentInterrupted

    spec = recurrent_spec(args.file, getattr(args, "overrides", None), getattr(args, "network", None))
    if spec is None:
        return None
    refused = [f for f, v in (("--method", getattr(args, "method", None) not in (None, "darts")), ("--smooth", getattr(args, "smooth", None) not in (None, "none")),
                               ("--early-stop", getattr(args, "early_stop", None) is not None), ("--hessian", bool(getattr(args, "hessian", False)))) if v]  # fmt: skip
    if refused:
        raise DiagnosticError([Diagnostic(f"{refused[0]} is not available for a recurrent search", None, "a recurrent search runs DARTS order 1 or 2")])
    select = args.select.replace("-", "_") if getattr(args, "select", None) else None
    t0 = time.perf_counter()
    try:
        r = api.search(spec, _data(args.data), args.out, overrides=getattr(args, "overrides", None), resume=args.resume,
                       progress=not getattr(args, "no_progress", False), epochs=args.epochs, batch_size=args.batch_size,
                       order=args.order, seed=args.seed, select=select, strength_window=getattr(args, "strength_window", None),
                       warmup=getattr(args, "warmup", None), lr=getattr(args, "lr", None), weight_decay=getattr(args, "weight_decay", None),
                       a_lr=getattr(args, "arch_lr", None), a_weight_decay=getattr(args, "arch_weight_decay", None),
                       limit_batches=getattr(args, "limit_batches", None), device=getattr(args, "device", None) or "auto")  # fmt: skip
    except RecurrentInterrupted as e:
        print(f"nasir: {e}", file=sys.stderr)
        return 130
    sys.stdout.write(r.derived_text)
    last = r.metrics[-1] if r.metrics else {}
    print(f"\ngenotype: {r.genotype}")
    if last:
        print(f"epoch {last['epoch']}: train perplexity {last['train_ppl']:.2f}, valid perplexity {last['valid_ppl']:.2f} (supernet)")
    print(f"search took {time.perf_counter() - t0:.0f} s; files in {r.out}/:")
    for name in r.files:
        print(f"  {name}")
    return 0


def train_cli(args: Any, spec: ir.Spec | None = None) -> int | None:
    """`nasir train FILE` of a derived recurrent cell: the language model, perplexity. `spec`: FILE as the
    caller already loaded it (with `args.overrides` and `args.network`), so it is not read again."""
    from nasir.rnn import api
    from nasir.rnn.search import RecurrentInterrupted

    spec = recurrent_spec(spec if spec is not None else args.file, getattr(args, "overrides", None), getattr(args, "network", None))
    if spec is None:
        return None
    try:
        r = api.train(spec, _data(args.data), args.out, overrides=getattr(args, "overrides", None), resume=args.resume,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      clip=getattr(args, "grad_clip", None), seed=args.seed, limit_batches=args.limit_batches,
                      device=getattr(args, "device", None) or "auto", overwrite=bool(getattr(args, "overwrite", False)))  # fmt: skip
    except RecurrentInterrupted as e:
        print(f"nasir: {e}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: rank 0 reports, as it writes
        print(f"valid perplexity {r.valid_ppl:.2f}, test perplexity {r.test_ppl:.2f}; weights in {r.out / 'model.pt'}", file=sys.stderr)
    return 0


def verify_export(model_path: str | Path, spec_or_path: ir.Spec | str | Path, *, weights: str | Path | None = None,
                  seed: int = 0, overrides: Any = None, network: str | None = None):  # fmt: skip
    """`nasir verify-export` of a language model: nasir/rnn/export.py `parity` (words and a hidden state in,
    per batch size, as nasir.targets.export.Parity), or None when the spec is not a language model."""
    from nasir.rnn import api, export

    spec = recurrent_spec(spec_or_path, overrides, network)
    if spec is None:
        return None
    return export.parity(api.build(spec, weights=weights, seed=seed, overrides=overrides), model_path)


def compile_spec(spec_or_path: ir.Spec | str | Path, target: str, out: str | Path, *, weights: str | Path | None = None,
                 seed: int = 0, overrides: Any = None) -> Path | None:  # fmt: skip
    from nasir.rnn import api

    spec = recurrent_spec(spec_or_path, overrides)
    if spec is None:
        return None
    return api.compile(spec, target, out, weights=weights, seed=seed, overrides=overrides)
