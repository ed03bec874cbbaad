"""A small study: do the methods of four NAS papers do what the papers claim, on the embedded digits?

    python benchmarks/study.py [--seeds 0 1 2] [--epochs N] [--out benchmarks/results]
    python benchmarks/study.py --quick        # 1 seed, 1 epoch, 2 batches per run: checks that the script works

Runs (each seed), all on scikit-learn's 8 x 8 digits (`data="digits"`), CPU, one thread, with the
largest eigenvalue of the Hessian of L_val w.r.t. alpha recorded after every epoch (`hessian=True`;
Lanczos, flagged when it did not converge, nasir/search/smoothing.py):

  DARTS        examples/digits.cell, first-order DARTS, magnitude selection (softmax(alpha), top-2 per node)
  OStr-DARTS   the same search, operation-strength selection (OStr-DARTS Eq. 11) and Algorithm 1's early stop
  SDARTS-RS    examples/digits.cell, random smoothing of alpha in the weight step (projected onto the simplex)
  SDARTS-ADV   examples/digits.cell, adversarial (PGD, eval mode) smoothing, `--adv-steps` PGD steps (the
               paper uses 7; reduced here, default 3, to fit the time budget)
  Stretchable  examples/digits_stretchable.cell: `topology outputs any`, `choice(darts - none)`, MiLeNAS

DARTS and OStr-DARTS share ONE search. OStr-DARTS changes only the selection rule; the supernet
optimisation is the same (nasir/search/strength.py; the operation strength is recorded in every search
whatever `select` says, without extra cost). The runtime writes, after every epoch, softmax's input
`alphas/epoch_NNN.json`, the strengths averaged over that epoch's architecture steps
`strengths/epoch_NNN.json` and the topology variables `betas/epoch_NNN.json`; the script derives from
them with `passes/derive.py`'s `Derive` on the prepared space exactly as `Search.derive()` does (most
likely edges and empty-code node removal for the stretchable cells): scores softmax(alpha) for
magnitude, the strengths as they are for OStr. The OStr-DARTS row replays Algorithm 1 (early stop after
the derived architecture repeats C = `--patience` times in a row, compared as order-free edge sets, the
runtime's `EarlyStop` and `architecture_key`) on the per-epoch strength derivations: the search before
the stop is exactly what `select="strength", early_stop=C` would have run, so the row reports the
architecture, eigenvalue and supernet accuracy of the epoch it stops at (the last epoch if it never
stops). As a check the script re-derives every run's final magnitude architecture and warns when it
differs from the runtime's `SearchResult.derived`.

Budget (defaults, sized so that 3 seeds take about 25 minutes on a shared 2-core machine): the supernet
has `--layers 3` cells (normal, reduce, reduce; examples/digits.cell has 5), C = 8, batch 32,
`--epochs 8` epochs of `--batches 6` steps each (48 architecture steps; the papers run about 20,000 on
CIFAR-10), so these are early-search observations. Each derived architecture is retrained in the digits
network at its defaults (C = 8, 5 layers) with the `digits` preset for `--retrain-epochs` epochs
(default 3, the preset has 8); "held-out acc" is the accuracy on the preset's held-out 20 % after the
last epoch. Identical derived architectures of one seed are retrained once.

Reported per derived architecture and cell kind: the share of parameter-free ops among its edges
(nasir/ops.py REGISTRY `parameter_free`: none, skip_connect, max/avg pool; skip_connect at stride 2 in
a reduction cell is a FactorizedReduce with weights, counted parameter-free by the registry's
name-level flag as the papers count it), skip connections, cell depth and width (nasir/analysis.py,
SDARTS appendix 7.4); the eigenvalue at the reported epoch; the supernet's valid accuracy (on the
architecture half, `--batches` batches); the held-out accuracy after retraining; and the time of the
search steps and of the eigenvalue diagnostics, separately. Every figure is given per seed and as
mean +- sample standard deviation over the seeds.

Outputs in `--out`: study.md (the tables and the sentences computed from the numbers), study.json
(the raw rows, per-epoch series and settings), study.png (per epoch, mean and range over seeds: the
eigenvalue; the parameter-free share of the normal and of the reduction cell derived at that epoch
under each row's selection rule). Search directories go to `--runs` (default: a temporary directory,
deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits.cell"
STRETCHABLE = ROOT / "examples" / "digits_stretchable.cell"

# (row name, search key, selection) — a search key names one supernet optimisation.
SEARCHES = {
    "darts": dict(spec=DIGITS, method="darts"),
    "rs": dict(spec=DIGITS, method="darts", smooth="rs"),
    "adv": dict(spec=DIGITS, method="darts", smooth="adv"),
    "stretch": dict(spec=STRETCHABLE, method="milenas"),
}
ROWS = (
    ("DARTS", "darts", "magnitude"),
    ("OStr-DARTS", "darts", "strength"),
    ("SDARTS-RS", "rs", "magnitude"),
    ("SDARTS-ADV", "adv", "magnitude"),
    ("Stretchable", "stretch", "magnitude"),
)


# ---- derivation from the per-epoch score files ---------------------------------------------------------
def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def derive(prepared, scores: dict[str, list[list[float]]], betas: dict[str, list[list[float]]] | None):
    """What `Search.derive()` computes, from score tables on disk (no budgets or limits in these spaces)."""
    from nasir.passes.derive import Derive
    from nasir.search.topology import most_likely_edges, removed_nodes

    keep, remove = {}, {}
    for kind, rows in (betas or {}).items():
        b = [torch.tensor(r, dtype=torch.float64) for r in rows]
        keep[kind] = most_likely_edges(prepared.cell(kind), b)
        remove[kind] = removed_nodes(prepared.cell(kind), b)
    return Derive(scores, keep_edges=keep, remove_nodes=remove).run(prepared).spec


def magnitude(alphas: dict[str, list[list[float]]]) -> dict[str, list[list[float]]]:
    return {k: torch.tensor(v, dtype=torch.float64).softmax(-1).tolist() for k, v in alphas.items()}


def epoch_scores(run_dir: Path, epoch: int, select: str) -> tuple[dict, dict | None]:
    name = f"epoch_{epoch:03d}.json"
    betas = _read(run_dir / "betas" / name) if (run_dir / "betas" / name).exists() else None
    if select == "strength":
        return _read(run_dir / "strengths" / name), betas
    return magnitude(_read(run_dir / "alphas" / name)), betas


# ---- what is measured on a derived spec ------------------------------------------------------------------
KINDS = ("normal", "reduce")


def shape(spec) -> dict[str, Any]:
    """Per cell kind: edges, parameter-free edges and their share, skip connections, ops, depth, width."""
    from nasir import ops
    from nasir.analysis import cell_depth, cell_width

    out: dict[str, Any] = {"edges": 0, "param_free": 0}
    for c in spec.cells:
        kind = "reduce" if c.reduction else "normal"
        used = [e.op for e in c.edges if e.op is not None]
        pf = sum(ops.REGISTRY[o].parameter_free for o in used)
        out["edges"] += len(used)
        out["param_free"] += pf
        out[kind] = {
            "cell": c.name, "edges": len(used), "param_free": pf, "param_free_frac": pf / max(len(used), 1),
            "skip": used.count("skip_connect"), "ops": used, "depth": cell_depth(c), "width": float(cell_width(c)),
        }  # fmt: skip
    out["param_free_frac"] = out["param_free"] / max(out["edges"], 1)
    return out


def replay_early_stop(archs: list[str], patience: int) -> int:
    """The epoch (1-based) Algorithm 1 stops at, with the runtime's EarlyStop; the last one if it never does."""
    from nasir.search.strength import EarlyStop

    stop = EarlyStop(patience)
    for i, a in enumerate(archs):
        if stop.update(a):
            return i + 1
    return len(archs)


# ---- the runs -----------------------------------------------------------------------------------------
def run_search(key: str, seed: int, args, runs: Path) -> dict[str, Any]:
    from nasir.lower import resolve
    from nasir.search.runner import derived_text, search
    from nasir.search.supernet import prepare

    cfg = SEARCHES[key]
    out = runs / f"{key}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"layers={args.layers}"]
    extra = {"smooth": cfg["smooth"]} if "smooth" in cfg else {}
    if cfg.get("smooth") == "adv":
        extra["adv_steps"] = args.adv_steps
    t0 = time.perf_counter()
    res = search(cfg["spec"], data="digits", out=out, epochs=args.epochs, seed=seed, method=cfg["method"], order=1,
                 select="magnitude", hessian=True, batch_size=args.batch_size, limit_batches=args.batches,
                 device="cpu", progress=False, artifacts=False, overrides=overrides, **extra)  # fmt: skip
    wall = time.perf_counter() - t0
    spec, _ = resolve(cfg["spec"], overrides)
    prepared = prepare(spec)
    epochs = len(res.metrics)
    per_select: dict[str, list] = {}
    for select in ("magnitude", "strength") if key == "darts" else ("magnitude",):
        per_select[select] = [derive(prepared, *epoch_scores(out, e, select)) for e in range(1, epochs + 1)]
    final = derived_text(per_select["magnitude"][-1], str(cfg["spec"]), {"layers": args.layers})
    if final != res.derived_text:
        print(f"  WARNING: {key} seed {seed}: re-derived magnitude architecture differs from SearchResult.derived",
              file=sys.stderr)  # fmt: skip
    steps_s = sum(m["train_s"] for m in res.metrics)
    diag_s = sum(m.get("hessian_s", 0.0) for m in res.metrics)
    last = res.metrics[-1]
    print(f"  search {key:<8} seed {seed}: {wall:7.1f} s wall ({steps_s:.0f} s steps, {diag_s:.0f} s eigenvalue; "
          f"{epochs} epochs x {last['steps']} steps; lambda_max {last.get('hessian_eig', float('nan')):.4g}"
          f"{'' if last.get('hessian_converged', True) else ' (not converged)'}, supernet valid acc {last['valid_acc']:.3f})",
          flush=True)  # fmt: skip
    return {"key": key, "seed": seed, "dir": out, "result": res, "wall": wall, "steps_s": steps_s, "diag_s": diag_s,
            "derived": per_select}  # fmt: skip


def retrain(spec, text: str, seed: int, args, out: Path, cache: dict[str, dict]) -> dict[str, Any]:
    from nasir.train import TrainConfig, train

    if text in cache:
        return {**cache[text], "reused": True}
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig.from_preset("digits", epochs=args.retrain_epochs, seed=seed, limit_batches=args.retrain_batches)
    t0 = time.perf_counter()
    last = train(spec, "digits", out, cfg, device="cpu", progress=False)
    r = {"held_out_acc": last["valid_acc"], "best_held_out_acc": last["best_valid_acc"], "retrain_s": time.perf_counter() - t0,
         "retrain_epochs": args.retrain_epochs, "reused": False}  # fmt: skip
    cache[text] = r
    return r


def study(args, runs: Path) -> list[dict[str, Any]]:
    from nasir.search.runner import derived_text
    from nasir.search.strength import architecture_key

    rows = []
    for seed in args.seeds:
        searches = {key: run_search(key, seed, args, runs) for key in SEARCHES}
        cache: dict[str, dict] = {}
        for name, key, select in ROWS:
            s = searches[key]
            res = s["result"]
            archs = s["derived"][select]
            texts = [derived_text(a, res.derived.file) for a in archs]
            keys = [architecture_key(a) for a in archs]
            epoch = replay_early_stop(keys, args.patience) if select == "strength" else len(archs)
            spec, text = archs[epoch - 1], texts[epoch - 1]
            m = res.metrics[epoch - 1]
            t0 = time.perf_counter()
            rt = retrain(spec, text, seed, args, s["dir"] / f"retrain_{select}", cache)
            print(f"  retrain {name:<12} seed {seed}: {time.perf_counter() - t0:7.1f} s  held-out acc {rt['held_out_acc']:.3f}"
                  + ("  (same architecture as an earlier row: reused)" if rt["reused"] else ""), flush=True)  # fmt: skip
            shapes = [shape(a) for a in archs]
            rows.append({
                "run": name, "seed": seed, "search": key, "select": select, "method": SEARCHES[key]["method"],
                "smooth": SEARCHES[key].get("smooth", "none"), "epoch": epoch, "epochs": len(archs),
                "stopped_early": select == "strength" and epoch < len(archs),
                "search_wall_s": s["wall"], "search_steps_s": s["steps_s"], "eigenvalue_s": s["diag_s"],
                "patience": args.patience if select == "strength" else None,
                "hessian_eig": m.get("hessian_eig"), "hessian_converged": m.get("hessian_converged"),
                "supernet_valid_acc": m["valid_acc"], "shape": shape(spec), **rt, "derived": text,
                "per_epoch": {
                    "hessian_eig": [r.get("hessian_eig") for r in res.metrics],
                    "hessian_converged": [r.get("hessian_converged") for r in res.metrics],
                    "valid_acc": [r["valid_acc"] for r in res.metrics],
                    "param_free_frac": [sh["param_free_frac"] for sh in shapes],
                    **{f"param_free_{k}": [sh.get(k, {}).get("param_free_frac") for sh in shapes] for k in KINDS},
                    "skip_normal": [sh.get("normal", {}).get("skip", 0) for sh in shapes],
                },
            })  # fmt: skip
    return rows


# ---- reporting ----------------------------------------------------------------------------------------
def _clean(xs) -> list[float]:
    return [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]


def _mean(xs) -> float:
    xs = _clean(xs)
    return statistics.fmean(xs) if xs else float("nan")


def _sd(xs) -> float:
    xs = _clean(xs)
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def _ms(xs, fmt: str = ".2f") -> str:
    """mean +- sample standard deviation (just the value for one seed)."""
    xs = _clean(xs)
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.fmean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def by_run(rows) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["run"], []).append(r)
    return out


def _kind(r, kind: str, field: str):
    return r["shape"].get(kind, {}).get(field)


def summary_table(rows) -> str:
    """One line per run: mean ± sample standard deviation over the seeds."""
    head = ("| run | seeds | param-free share normal | param-free share reduce | skip N / R | λ_max at the reported epoch "
            "| depth N / R | supernet valid acc | held-out acc (retrained) | search steps s | eigenvalue s |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run, rs in by_run(rows).items():
        shared = r"\*" if rs[0]["select"] == "strength" else ""
        lines.append(
            f"| {run} | {len(rs)} | {_ms(_kind(r, 'normal', 'param_free_frac') for r in rs)} "
            f"| {_ms(_kind(r, 'reduce', 'param_free_frac') for r in rs)} "
            f"| {_ms((_kind(r, 'normal', 'skip') for r in rs), '.1f')} / {_ms((_kind(r, 'reduce', 'skip') for r in rs), '.1f')} "
            f"| {_ms((r['hessian_eig'] for r in rs), '.3g')} "
            f"| {_ms((_kind(r, 'normal', 'depth') for r in rs), '.1f')} / {_ms((_kind(r, 'reduce', 'depth') for r in rs), '.1f')} "
            f"| {_ms((r['supernet_valid_acc'] for r in rs), '.3f')} | {_ms((r['held_out_acc'] for r in rs), '.3f')} "
            f"| {_ms((r['search_steps_s'] for r in rs), '.0f')}{shared} | {_ms((r['eigenvalue_s'] for r in rs), '.0f')}{shared} |"
        )  # fmt: skip
    return "\n".join(lines)


def seed_table(rows) -> str:
    head = ("| run | seed | epoch | param-free normal | param-free reduce | skip N/R | λ_max | depth N/R | width N/R "
            "| supernet valid acc | held-out acc |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sh = r["shape"]
        n, red = sh.get("normal", {}), sh.get("reduce", {})
        ep = f"{r['epoch']}/{r['epochs']}" + (" (early stop)" if r["stopped_early"] else "")
        flag = "" if r.get("hessian_converged", True) in (True, None) else " †"
        lines.append(
            f"| {r['run']} | {r['seed']} | {ep} | {n.get('param_free', 0)}/{n.get('edges', 0)} | {red.get('param_free', 0)}/{red.get('edges', 0)} "
            f"| {n.get('skip', 0)}/{red.get('skip', 0)} | {r['hessian_eig']:.4g}{flag} | {n.get('depth', '-')}/{red.get('depth', '-')} "
            f"| {n.get('width', 0):.3g}c/{red.get('width', 0):.3g}c | {r['supernet_valid_acc']:.3f} | {r['held_out_acc']:.3f} |"
        )  # fmt: skip
    return "\n".join(lines)


def _count(pairs, test) -> int:
    return sum(1 for a, b in pairs if test(a, b))


def claims(rows) -> list[str]:
    """Comparison sentences computed from the numbers: means ± standard deviations, and in how many seeds
    a comparison holds. A difference whose sign is not the same in every seed is reported as such."""
    g = by_run(rows)
    n = len({r["seed"] for r in rows})
    out = []

    def per_seed(run, fn):
        return {r["seed"]: fn(r) for r in g[run]}

    def paired(run_a, run_b, fn):
        a, b = per_seed(run_a, fn), per_seed(run_b, fn)
        return [(a[s], b[s]) for s in a if s in b and a[s] is not None and b[s] is not None]

    def verdict(pairs, what: str) -> str:
        k = _count(pairs, lambda a, b: a > b + 1e-12)
        eq = _count(pairs, lambda a, b: abs(a - b) <= 1e-12)
        return f"{what} in {k} of {len(pairs)} seeds" + (f", equal in {eq}" if eq else "")

    # 1. OStr-DARTS: magnitude drifts to parameter-free ops as the search runs; strength does not.
    d, o = g["DARTS"], g["OStr-DARTS"]
    first = [r["per_epoch"]["param_free_frac"][0] for r in d]
    last = [r["per_epoch"]["param_free_frac"][-1] for r in d]
    o_first = [r["per_epoch"]["param_free_frac"][0] for r in o]
    o_last = [r["per_epoch"]["param_free_frac"][-1] for r in o]
    rose = list(zip(last, first))
    vs = paired("DARTS", "OStr-DARTS", lambda r: r["shape"]["param_free_frac"])
    stops = [r["epoch"] for r in o if r["stopped_early"]]
    stop_text = (f"stopped early in {len(stops)} of {len(o)} seeds (at epoch {', '.join(map(str, stops))})" if stops
                 else f"did not stop early in any seed (all ran {o[0]['epochs']} epochs)")  # fmt: skip
    holds = _count(rose, lambda a, b: a > b) == len(rose) and _count(vs, lambda a, b: a > b) == len(vs)
    out.append(
        f"**Magnitude vs operation strength (OStr-DARTS).** On the DARTS supernet ({n} seeds), magnitude selection's "
        f"parameter-free share (both cells) went from {_ms(first)} after epoch 1 to {_ms(last)} after epoch {d[0]['epochs']} "
        f"({verdict(rose, 'higher at the end')}); strength selection on the same supernets went {_ms(o_first)} -> {_ms(o_last)}. "
        f"Algorithm 1 (C = {o[0].get('patience', '?')}) {stop_text}. At the reported epochs magnitude selects "
        f"{_ms(r['shape']['param_free_frac'] for r in d)}, OStr {_ms(r['shape']['param_free_frac'] for r in o)} "
        f"({verdict(vs, 'magnitude higher')}). "
        + ("The paper's claim (magnitude drifts towards parameter-free ops, OStr does not) is consistent with every seed here."
           if holds else
           "The paper's claim (magnitude drifts towards parameter-free ops and ends above OStr) does not hold in every seed "
           "at this search length.")
    )  # fmt: skip
    # 2. SDARTS: smoothing keeps the largest Hessian eigenvalue lower.
    lam_d = [r["hessian_eig"] for r in g["DARTS"]]
    lam_d0 = [r["per_epoch"]["hessian_eig"][0] for r in g["DARTS"]]
    parts, all_lower = [], []
    for run in ("SDARTS-RS", "SDARTS-ADV"):
        pairs = paired("DARTS", run, lambda r: r["hessian_eig"])
        all_lower.append(_count(pairs, lambda a, b: a > b) == len(pairs))
        parts.append(f"{run} {_ms((r['hessian_eig'] for r in g[run]), '.3g')} ({verdict(pairs, 'below DARTS')})")
    grew = list(zip(lam_d, lam_d0))
    unconverged = sum(1 for r in rows for c in r["per_epoch"]["hessian_converged"] if c is False)
    total = sum(len(r["per_epoch"]["hessian_converged"]) for r in rows)
    out.append(
        f"**Smoothing and the Hessian (SDARTS).** Largest eigenvalue of the Hessian of L_val w.r.t. alpha at the last "
        f"epoch: DARTS {_ms(lam_d, '.3g')} (epoch 1: {_ms(lam_d0, '.3g')}; {verdict(grew, 'grew')}), " + ", ".join(parts) + ". "
        + ("Smoothing ending below DARTS, as SDARTS claims, holds in every seed for both RS and ADV." if all(all_lower) else
           "Smoothing ending below DARTS holds in every seed for "
           + " and ".join(r for r, ok in zip(("RS", "ADV"), all_lower) if ok) + " only." if any(all_lower) else
           "Smoothing ending below DARTS does not hold in every seed for either RS or ADV here.")
        + f" The eigenvalue iteration (Lanczos) was flagged as not converged in {unconverged} of {total} per-epoch values"
        + (" (marked † per seed)." if unconverged else ".")
    )  # fmt: skip

    # 3. Stretchable cells come out deeper; and how much of them is parameter-free.
    parts = []
    for kind in KINDS:
        pairs = paired("Stretchable", "DARTS", lambda r, k=kind: _kind(r, k, "depth"))
        parts.append(f"{kind} {_ms((_kind(r, kind, 'depth') for r in g['Stretchable']), '.2g')} vs "
                     f"{_ms((_kind(r, kind, 'depth') for r in g['DARTS']), '.2g')} ({verdict(pairs, 'deeper')})")  # fmt: skip
    pf = {k: [_kind(r, k, "param_free_frac") for r in g["Stretchable"]] for k in KINDS}
    full = {k: sum(1 for x in pf[k] if x is not None and x >= 1.0 - 1e-12) for k in KINDS}
    out.append(
        "**Stretchable cells.** Cell depth, stretchable vs DARTS: " + "; ".join(parts) + ". "
        f"Parameter-free share of the stretchable cells: normal {_ms(pf['normal'])}, reduction {_ms(pf['reduce'])}"
        + ("; every edge parameter-free in "
           + ", ".join(f"{full[k]} of {len(pf[k])} seeds ({k})" for k in KINDS if full[k]) if any(full.values()) else "")
        + "."
    )  # fmt: skip
    # 4. Supernet accuracy: stated, with any cause as a hypothesis.
    acc = {run: [r["supernet_valid_acc"] for r in g[run]] for run in ("DARTS", "SDARTS-RS", "SDARTS-ADV")}
    adv_pairs = paired("DARTS", "SDARTS-ADV", lambda r: r["supernet_valid_acc"])
    lower = _count(adv_pairs, lambda a, b: a > b)
    out.append(
        "**Supernet accuracy** (eval mode, unperturbed softmax(alpha), architecture half): "
        + ", ".join(f"{run} {_ms(v, '.3f')}" for run, v in acc.items())
        + f"; SDARTS-ADV below DARTS in {lower} of {len(adv_pairs)} seeds."
        + (" Hypothesis, not tested here: ADV trains the weights (and gathers the BN statistics) on worst-case "
           "perturbed architecture weights, while this accuracy uses the unperturbed ones." if lower else "")
    )  # fmt: skip
    # 5. Accuracy after retraining, for the record.
    ho = {run: [r["held_out_acc"] for r in g[run]] for run in g}
    spread = max(_sd(v) for v in ho.values())
    means = {run: _mean(v) for run, v in ho.items()}
    gap = max(means.values()) - min(means.values())
    out.append(
        "**Retrained accuracy** (held-out digits, short retraining): " + ", ".join(f"{run} {_ms(v, '.3f')}" for run, v in ho.items())
        + (f". The gap between the highest and lowest mean ({gap:.3f}) is "
           + ("smaller than" if gap < spread else "larger than") + f" the largest seed standard deviation ({spread:.3f})."
           if not math.isnan(spread) else ".")
    )  # fmt: skip
    return out


def _band(ax, series: list[list[float | None]], color: str, label: str, style: str = "o-") -> None:
    """Mean over seeds per epoch, with the min-max range shaded."""
    length = max(len(s) for s in series)
    xs = list(range(1, length + 1))
    cols = [[s[i] for s in series if len(s) > i and s[i] is not None] for i in range(length)]
    ax.plot(xs, [_mean(c) for c in cols], style, color=color, label=label)
    ax.fill_between(xs, [min(c) if c else float("nan") for c in cols], [max(c) if c else float("nan") for c in cols],
                    color=color, alpha=0.15)  # fmt: skip


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    g = by_run(rows)
    n = len({r["seed"] for r in rows})
    colors = {"DARTS": "C0", "OStr-DARTS": "C1", "SDARTS-RS": "C2", "SDARTS-ADV": "C3", "Stretchable": "C4"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for run in ("DARTS", "SDARTS-RS", "SDARTS-ADV", "Stretchable"):
        label = run + (" (= OStr supernet)" if run == "DARTS" else "")
        _band(ax, [r["per_epoch"]["hessian_eig"] for r in g.get(run, [])], colors[run], label)
        for r in g.get(run, []):
            bad = [i + 1 for i, c in enumerate(r["per_epoch"]["hessian_converged"]) if c is False]
            ax.plot(bad, [r["per_epoch"]["hessian_eig"][i - 1] for i in bad], "x", color=colors[run])
    ax.set_title(f"largest eigenvalue of ∇²_α L_val per epoch\n(mean, range over {n} seeds; x: not converged)", fontsize=10)
    ax.set(xlabel="epoch", ylabel="λ_max")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    for ax, kind in zip(axes[1:], KINDS):
        for run, rs in g.items():
            _band(ax, [r["per_epoch"][f"param_free_{kind}"] for r in rs], colors[run], run,
                  "s--" if run == "OStr-DARTS" else "o-")  # fmt: skip
            for r in rs:
                if r["stopped_early"]:
                    ax.plot([r["epoch"]], [r["per_epoch"][f"param_free_{kind}"][r["epoch"] - 1]], "k*", markersize=11)
        ax.set_title(f"parameter-free share of the {kind} cell derived each epoch\n(mean, range over {n} seeds; ★ early stop)",
                     fontsize=10)  # fmt: skip
        ax.set(xlabel="epoch", ylabel="share of edges", ylim=(-0.05, 1.05))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


README_BEGIN = "<!-- study:begin (generated by benchmarks/study.py --readme; do not edit by hand) -->"
README_END = "<!-- study:end -->"
NOTE = ("param-free share: edges of the derived cell carrying none, skip_connect, max or avg pool, per cell kind. "
        "λ_max: largest eigenvalue of the Hessian of L_val w.r.t. alpha at the reported epoch (Lanczos, at most 20 "
        "Hessian-vector products, nasir/search/smoothing.py; † not converged). OStr-DARTS shares the DARTS search "
        "(\\* its times are the DARTS search's) and reports the epoch Algorithm 1 stops at. search steps s: the "
        "architecture and weight steps only; eigenvalue s: the per-epoch Hessian diagnostic, which a search without "
        "`hessian` does not pay. Depth/width: SDARTS appendix 7.4 (nasir/analysis.py).")  # fmt: skip


def settings_line(st: dict[str, Any]) -> str:
    return (f"seeds {st['seeds']}, {st['epochs']} search epochs x {st['batches']} steps (batch {st['batch_size']}), "
            f"{st['layers']}-cell supernet (C = 8), SDARTS-ADV {st['adv_steps']} PGD steps, OStr early stop C = {st['patience']}, "
            f"retraining {st['retrain_epochs']} epochs of the digits preset (5-cell network); total wall time "
            f"{st['total_s']:.0f} s on a shared 2-core machine")  # fmt: skip


def report(rows, st: dict[str, Any], command: str) -> str:
    md = [
        "# nasir study: DARTS, OStr-DARTS, SDARTS-RS/ADV, stretchable cells on the embedded digits",
        "",
        f"Command: `{command}`",
        f"Settings: {settings_line(st)}.",
        "",
        f"Mean ± sample standard deviation over {len(st['seeds'])} seeds:",
        "",
        summary_table(rows),
        "",
        "Per seed:",
        "",
        seed_table(rows),
        "",
        NOTE,
        "",
        *(s + "\n" for s in claims(rows)),
    ]
    return "\n".join(md)


def readme_section(rows, st: dict[str, Any]) -> str:
    """The README's study section body: settings, the summary table and the generated sentences."""
    return "\n".join([
        README_BEGIN,
        f"Settings: {settings_line(st)}. Mean ± sample standard deviation over the seeds (per seed in "
        "benchmarks/results/study.md; per-epoch curves in benchmarks/results/study.png):",
        "",
        summary_table(rows),
        "",
        NOTE,
        "",
        *(s + "\n" for s in claims(rows)),
        README_END,
    ])  # fmt: skip


def write_readme(path: Path, rows, st: dict[str, Any]) -> None:
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{path}: no study markers ({README_BEGIN!r} ... {README_END!r})")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(head + readme_section(rows, st) + tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8, help="search epochs (default 8)")
    p.add_argument("--batches", type=int, default=6, help="steps per search epoch (limit_batches; default 6)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=3, help="cells in the supernet (default 3: normal, reduce, reduce)")
    p.add_argument("--adv-steps", type=int, default=3, help="PGD steps of SDARTS-ADV (the paper: 7)")
    p.add_argument("--patience", type=int, default=2, help="C of OStr-DARTS' Algorithm 1 (default 2)")
    p.add_argument("--retrain-epochs", type=int, default=3)
    p.add_argument("--retrain-batches", type=int, default=None, help="limit steps per retraining epoch")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results (--quick: a temporary directory)")
    p.add_argument("--runs", type=Path, default=None, help="keep the search directories here (default: temporary)")
    p.add_argument("--quick", action="store_true", help="seed 0, 1 epoch, 2 batches per run, 1 retraining epoch of 2 batches")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--from-json", type=Path, default=None, metavar="STUDY_JSON",
                   help="run nothing: render study.md, study.png (and --readme) from a study.json")  # fmt: skip
    p.add_argument("--readme", type=Path, default=None, metavar="README",
                   help="also replace the README's generated study section (between its study markers)")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.batches, args.retrain_epochs, args.retrain_batches = [0], 1, 2, 1, 2
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="nasir-study-quick-")) if args.quick else ROOT / "benchmarks" / "results"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        rows, settings = saved["rows"], saved["settings"]
        command = settings.get("command", "python benchmarks/study.py")
    else:
        torch.set_num_threads(args.threads)
        runs = args.runs or Path(tempfile.mkdtemp(prefix="nasir-study-runs-"))
        t0 = time.perf_counter()
        try:
            rows = study(args, runs)
        finally:
            if args.runs is None:
                shutil.rmtree(runs, ignore_errors=True)
        total = time.perf_counter() - t0
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        command = " ".join(["python benchmarks/study.py", *(sys.argv[1:] if argv is None else argv)])
        settings.update(data="digits", device="cpu", torch=torch.__version__, total_s=round(total, 1), command=command)
        (args.out / "study.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1, default=str) + "\n")
    text = report(rows, settings, command)
    (args.out / "study.md").write_text(text)
    plot(rows, args.out / "study.png")
    if args.readme is not None:
        write_readme(args.readme, rows, settings)
    print()
    print(text)
    print(f"wrote {args.out / 'study.md'}, study.json, study.png" + (f", {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
