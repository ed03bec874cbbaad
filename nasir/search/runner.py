"""The search job's entry point `nasir.search` (docs/runtime.md): settings (search/settings.py), the loop
(search/loop.py), diagnostics (search/diagnostics.py) and files (search/artefacts.py) live beside it.

Per step (docs/methods.md, DARTS; the reference's train_search.py order): an architecture step on a batch of
the architecture half, then a weight step on a batch of the weight half. The papers' methods plug into
that loop, combinable: the architecture step's rule (DARTS order 1 or 2, MiLeNAS), PC-DARTS' partial
channels and stretchable cells' topology variables (in the supernet), SDARTS' perturbation (the weight
step's `soft`), the selection rule and early stop (at each epoch's derivation), the Hessian diagnostic. The training set is split in
two halves (DARTS train_portion 0.5). Defaults are the reference's: weights SGD lr 0.025 cosine-annealed
to 0.001 over the epochs, momentum 0.9, weight decay 3e-4, gradient norm clipped at 5; alpha Adam lr 3e-4,
betas (0.5, 0.999), weight decay 1e-3; seed 2, first order; no warm-up (PC-DARTS: architecture steps
from epoch 16, docs/methods.md). The spec's `search { ... }` settings (method darts(order = 2), epochs,
batch_size, seed, select, lr, lr_min, momentum, weight_decay, arch_lr, arch_weight_decay, warmup, ...)
override those defaults, and the caller's arguments (the CLI's flags) override the spec.

The output directory gets
    derived.cell          the derived architecture (standalone: cells and network, no search block)
    genotype.txt          its DARTS Genotype string (or NAS-Bench-201 string), when it has that form
    alphas.json           the final architecture variables {cell kind: [[alpha per op] per mixed edge]},
                          rows in IR edge order, ops in the choice's order (`nasir draw --alphas` reads it)
    alphas/epoch_NNN.json the same after every epoch
    strengths.json        operation strength per alpha (OStr-DARTS Eq. 11), same layout; strengths/epoch_NNN.json
    betas.json, gammas.json  topology variables (one list per beta row) / PC-DARTS edge variables, where present
    metrics.jsonl         one JSON object per epoch: losses, accuracies, learning rate, seconds, derivation
    checkpoint.pt         the state after the last finished epoch (or the step a stop signal arrived at)
    derived.onnx          the derived network UNTRAINED (its seeded initialisation, for checking the export; train
                          it with `nasir train`), input `image`, output `logits`; the seed is in its metadata
                          ("nasir.seed"), which `nasir verify-export` reads
    provenance.json       what the search was made from (nasir/provenance.py): spec, overrides, seed, data
    derived.png           a drawing of the derived cells
    alphas.png            a heatmap of softmax(alpha) per cell kind

Resuming (`resume=True`) restores model, optimisers, scheduler, RNG states, the position in the epoch
and the partial epoch's sums; the data order is a function of (seed, epoch), so a resumed search ends
with the same alphas and derived.cell as one that never stopped. SIGINT/SIGTERM stop at the next step
boundary and save a checkpoint first (under torchrun every rank stops after the same step; a second
signal stops at once only in a single process: nasir.device.StopFlag). On CUDA (docs/gpu.md) the
architecture gradients run without TF32, and `deterministic` makes a resumed search end with the
alphas of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nasir import device as dv
from nasir import ir
from nasir.data import classification as data_mod
from nasir.diagnostics import DiagnosticError
from nasir.macro import Plan
from nasir.runtime.process import keep_freed_memory
from nasir.search.artefacts import cost_fn, derived_text, export_onnx
from nasir.search.loop import CHECKPOINT, Search, SearchInterrupted, SearchResult, _flag_error
from nasir.search.settings import FLAGS, Options, make_options, spec_settings
from nasir.search.supernet import prepare

__all__ = ["CHECKPOINT", "FLAGS", "Options", "Search", "SearchInterrupted", "SearchResult", "check_space",
           "claim_out", "derived_text", "export_onnx", "keep_freed_memory", "make_options", "search", "spec_settings"]  # fmt: skip


# ---- the library entry point ----------------------------------------------------------------------------
def search(spec_or_path: ir.Spec | str | Path, data: str = "digits", out: str | Path | None = None, *,
           epochs: int | None = None, batch_size: int | None = None, order: int | None = None,
           seed: int | None = None, select: str | None = None, method: str | None = None,
           partial_channels: int | None = None, smooth: str | None = None, adv_steps: int | None = None,
           early_stop: int | None = None, hessian: bool | None = None, strength_window: int | None = None,
           warmup: int | None = None, w_lr: float | None = None, w_lr_min: float | None = None,
           momentum: float | None = None, w_weight_decay: float | None = None, a_lr: float | None = None,
           a_weight_decay: float | None = None, mixed_level: float | None = None, eps_end: float | None = None,
           device: str = "auto", resume: bool = False,
           overrides: Sequence[str] | Mapping[str, Any] | None = None, low_memory: bool = False,
           channels_last: bool | None = None, limit_batches: int | None = None, progress: bool = True,
           callback: Callable[[dict[str, Any]], None] | None = None,
           stop_after_steps: int | None = None, artifacts: bool = True, fp32_arch_grads: bool = True,
           deterministic: bool = False, fuse: bool = True, network: str | None = None) -> SearchResult:  # fmt: skip
    """Search a `.cell` space on `data` and derive an architecture; every file lands in `out`.

    `data`: `digits` (embedded), `synthetic[:N]`, `cifar10:PATH`, `folder:PATH`. Unset settings come
    from the spec's `search` block, then from the DARTS defaults; `Options` says what each one does
    (method darts|milenas|pcdarts, select magnitude|strength|strength_star|naive, smooth none|rs|adv:
    nasir/methods, with their arguments order, partial_channels, mixed_level, strength_window, eps_end,
    adv_steps; early_stop C, hessian, warmup, the optimisers' w_lr, w_lr_min, momentum, w_weight_decay,
    a_lr, a_weight_decay). Errors name the setting. `limit_batches` caps the steps per
    epoch (and the evaluation batches) for quick runs. `callback(info)` runs after every step;
    `stop_after_steps` stops (with a checkpoint) once that many steps are done in all, as a signal would.
    `artifacts=False` skips derived.onnx and the PNGs. `device`: auto | cpu | cuda | cuda:N (under
    torchrun, a CUDA run takes LOCAL_RANK's GPU; nasir.device.select_device). `fp32_arch_grads`: the
    architecture gradients without TF32; `deterministic`: deterministic CUDA algorithms, so a resumed
    search ends with the alphas of one that never stopped (docs/gpu.md). `fuse` (default): the fused
    supernet (passes/fuse.py; faster, the same values up to float rounding, docs/performance.md);
    False runs op by op as the DARTS reference does. `network`:
    which of the spec's networks the supernet stacks (default: the first; derived.cell names it first).
    Raises DiagnosticError for bad input and `SearchInterrupted` when stopped early.
    """
    from nasir.lower import resolve

    spec, plan = resolve(spec_or_path, overrides, network)
    values = dict(overrides) if isinstance(overrides, Mapping) else _override_values(overrides)
    dev = dv.select_device(device)
    data_mod.parse_data_spec(data)  # bad data specs fail before anything is built
    options = make_options(spec, data=data, overrides=values, limit_batches=limit_batches, channels_last=channels_last,
                           fp32_arch_grads=fp32_arch_grads, deterministic=deterministic, fuse=fuse,
                           low_memory=low_memory, device=dev, order=order, epochs=epochs, batch_size=batch_size,
                           seed=seed, select=select, method=method, partial_channels=partial_channels, smooth=smooth,
                           adv_steps=adv_steps, early_stop=early_stop, hessian=hessian,
                           strength_window=strength_window, warmup=warmup, w_lr=w_lr, w_lr_min=w_lr_min,
                           momentum=momentum, w_weight_decay=w_weight_decay, a_lr=a_lr,
                           a_weight_decay=a_weight_decay, mixed_level=mixed_level, eps_end=eps_end)  # fmt: skip
    out_dir = Path(out) if out is not None else Path("runs") / Path(spec.file).stem
    claim_out(out_dir, resume)  # before the data is read and the supernet built (issue 14, items 9, 10, 16)
    check_space(spec, plan, options)
    runner = Search(spec, plan, options, out_dir, progress=progress, callback=callback,
                    stop_after_steps=stop_after_steps, source=spec.file, artifacts=artifacts)  # fmt: skip
    return runner.run(resume=resume)


def claim_out(out: Path, resume: bool) -> None:
    """The run directory, checked before any work: a directory nasir can create and write (not a file,
    not under one), holding no other search unless `resume`. Temporary files of an atomic write that
    a kill interrupted (`.checkpoint.pt.*.tmp`, each a whole supernet) are removed."""
    from nasir.io import remove_stale_temporaries, writable_dir

    writable_dir(out, "search")
    if not resume and (out / CHECKPOINT).exists():
        raise _flag_error(f"'{out}' already holds a search (checkpoint.pt)", "continue it with --resume, or choose another --out")
    remove_stale_temporaries(out)


def check_space(spec: ir.Spec, plan: Plan, options: Options) -> None:
    """Failures the first step would meet, reported before it (issue 14, item 9); the spec-level ones
    (`nasir.verify.search_space_problems`) are also reported by `nasir check`. An unmeetable budget
    needs the network's cost, so it is checked here: the cheapest derivation the limits allow
    (every edge's best parameter-free candidate) must fit."""
    from nasir.verify import search_space_problems

    problems = search_space_problems(spec, plan)
    if problems:
        raise DiagnosticError(problems)
    budgets = spec.search.budgets if spec.search else ()
    if budgets and not any(c.topology is not None for c in spec.cells):  # (topology cells derive by their codes)
        from nasir import ops as ops_mod
        from nasir.passes.derive import derive

        searched = prepare(spec)
        cheap = {c.name: [[1.0 if ops_mod.REGISTRY[o].parameter_free and not ops_mod.REGISTRY[o].is_zero else 0.0 for o in row]
                          for row in c.alpha_rows] for c in searched.cells if c.alpha_rows}  # fmt: skip
        derive(searched, cheap, drop_none=options.drop_none, cost=cost_fn(plan))  # raises "budget cannot be met ..."


def _override_values(overrides: Sequence[str] | str | None) -> dict[str, Any]:
    from nasir.macro import parse_overrides

    if overrides is None:
        return {}
    return parse_overrides([overrides] if isinstance(overrides, str) else list(overrides))[0]
